/*
 * edge_link.h - the edge-link protocol, device side (C99 reference).
 *
 * Framing, CRCs and frame encode/decode for the serial link between a
 * sensor board and the edge-infer runtime. The spec is ../PROTOCOL.md; the
 * Python twin is ../protocol.py and ../stream.py, and both pass the shared
 * vectors in ../test_vectors.txt (see test_vectors.c).
 *
 * Made for small MCUs: no heap, no libc beyond string.h (and avr/pgmspace.h on
 * AVR, to keep the SHA-256 table in flash), every buffer is
 * the caller's, and no floating-point arithmetic (float32 samples and
 * scales are copied bit for bit; IEEE-754 binary32 floats are assumed, as
 * on AVR and ARM). Works where int is 16 bits.
 *
 * Sending: encode a frame into a buffer of EL_WIRE_SIZE(payload) bytes (or
 * EL_MAX_WIRE for any frame) and write the returned number of bytes.
 * Receiving: el_decoder_push() one byte at a time; it returns 1 when a
 * valid frame has arrived. Malformed input is counted, never fatal.
 */
#ifndef EDGE_LINK_H
#define EDGE_LINK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- sizes ------------------------------------------------------------ */

#define EL_VERSION 1u
#define EL_HEADER_LEN 9u   /* ver u8, type u8, flags u8, seq u16, t_us u32 */
#define EL_CRC_LEN 2u      /* CRC-16/CCITT-FALSE, little-endian */
#define EL_MAX_PAYLOAD 255u
#define EL_MIN_INNER 11u   /* EL_HEADER_LEN + EL_CRC_LEN */
#define EL_MAX_INNER 266u  /* EL_MIN_INNER + EL_MAX_PAYLOAD */
#define EL_MAX_ENCODED 268u /* COBS of the largest frame: a receive buffer for any frame */
#define EL_MAX_WIRE 269u   /* ... plus the 0x00 delimiter: a send buffer for any frame */
#define EL_MAX_CHANNELS 32u
#define EL_MAX_ACTION_NAME 24u
#define EL_MAX_ERROR_TEXT 64u
#define EL_DEFAULT_SAFE_TIMEOUT_MS 500u

/* Send-buffer bytes for a frame whose payload is n bytes (COBS and delimiter included). */
#define EL_WIRE_SIZE(n) ((n) + EL_MIN_INNER + ((n) + EL_MIN_INNER + 253u) / 254u + 1u)
/* Receive-buffer bytes for frames with payloads up to n bytes (no delimiter). */
#define EL_RX_SIZE(n) (EL_WIRE_SIZE(n) - 1u)

/* Payload sizes, for sizing buffers. */
#define EL_SENSOR_PAYLOAD(n_channels, sample_bytes) (1u + (n_channels) * (sample_bytes))
#define EL_ACTION_MAX_PAYLOAD (7u + EL_MAX_ACTION_NAME)
#define EL_ERROR_MAX_PAYLOAD (3u + EL_MAX_ERROR_TEXT)

/* ---- field values ----------------------------------------------------- */

#define EL_HELLO 1u
#define EL_SENSOR 2u
#define EL_ACTION 3u
#define EL_HEARTBEAT 4u
#define EL_ERROR 5u
#define EL_SESSION 6u /* signed links: the session handshake (PROTOCOL.md section 13) */

#define EL_INT16 1u   /* physical = raw * scale */
#define EL_FLOAT32 2u

#define EL_SOURCE_MODEL 0u
#define EL_SOURCE_FALLBACK 1u
#define EL_SAFE_ACTION (-1) /* ACTION code: "go to your own safe default" */

#define EL_FLAG_DEVICE_SAFE 0x01u /* device -> host: the device is in its safe state */
#define EL_FLAG_SIGNED 0x02u      /* the frame carries the signing trailer */

/* ---- signing (PROTOCOL.md section 13) ----------------------------------- */

#define EL_KEY_LEN 32u
#define EL_NONCE_LEN 8u
#define EL_SESSION_LEN 16u      /* host nonce, device nonce */
#define EL_TAG_LEN 8u           /* HMAC-SHA256, truncated */
#define EL_AUTH_LEN 15u         /* trailer: link_id u8, ts u48, tag */
#define EL_MAX_SIGNED_PAYLOAD 240u
#define EL_LINK_DEVICE 0u       /* link_id of frames the device signs */
#define EL_LINK_HOST 1u         /* link_id of frames the host signs */

/* ACTION reason codes: edge_infer/reasons.py is the master list (append only). */
#define EL_REASON_NONE 0u
#define EL_REASON_DEADLINE 1u
#define EL_REASON_BUSY 2u
#define EL_REASON_MODEL_ERROR 3u
#define EL_REASON_NO_DATA 4u
#define EL_REASON_LOW_CONFIDENCE 5u
#define EL_REASON_NON_FINITE 6u
#define EL_REASON_OUT_OF_RANGE 7u
#define EL_REASON_SATURATED 8u
#define EL_REASON_STUCK 9u
#define EL_REASON_GAP 10u
#define EL_REASON_STALE 11u
#define EL_REASON_OUT_OF_DISTRIBUTION 12u
#define EL_REASON_SHUTDOWN 13u
#define EL_REASON_OVERRUN 14u

/* ERROR codes (device-defined; these are the suggested common ones). */
#define EL_ERR_SENSOR 1u     /* the sensor does not answer or reports a fault */
#define EL_ERR_OVERRUN 2u    /* samples were lost (the device could not keep up) */
#define EL_ERR_LINK 3u       /* the device keeps receiving malformed frames */
#define EL_ERR_CONFIG 4u     /* the device's configuration is invalid */

/* Why el_decode_frame() rejected a frame; each maps to one counter. */
typedef enum {
    EL_OK = 0,
    EL_REJECT_COBS,         /* cobs_errors */
    EL_REJECT_CRC,          /* crc_errors */
    EL_REJECT_OVERSIZE,     /* oversize */
    EL_REJECT_BAD_LENGTH,   /* bad_length */
    EL_REJECT_BAD_VALUE,    /* bad_value */
    EL_REJECT_BAD_VERSION,  /* bad_version */
    EL_REJECT_UNKNOWN_TYPE, /* unknown_type */
    EL_REJECT_UNSIGNED,     /* unsigned: an unsigned frame at a receiver with a key */
    EL_REJECT_NO_KEY,       /* no_key: a signed frame at a receiver without a key */
    EL_REJECT_BAD_SIGNATURE,/* bad_signature: wrong tag (key, session, forgery, reflection) */
    EL_REJECT_UNBOUND,      /* unbound: signed by a sender without a session */
    EL_REJECT_REPLAYED      /* replayed: a correct tag whose ts is not above the last accepted */
} el_status;

/* ---- decoded frames --------------------------------------------------- */
/* Pointers point into the buffer the frame was decoded in; text is not NUL-terminated. */

typedef struct {
    uint8_t fw_major, fw_minor, fw_patch;
    uint8_t channel_count;        /* 1..EL_MAX_CHANNELS */
    uint8_t sample_type;          /* EL_INT16 or EL_FLOAT32 */
    uint32_t sample_rate_millihz; /* 10 Hz = 10000 */
    uint32_t schema_hash;         /* el_schema_hash() of the names and sample type */
    uint16_t safe_timeout_ms;     /* host silence after which the device goes safe */
    const uint8_t *scales_le;     /* decoded only: channel_count float32, see el_hello_scale() */
    const char *names;            /* "acc_x,acc_y,..." (may be empty) */
    uint8_t names_len;
} el_hello;

typedef struct {
    uint8_t sample_type;
    uint8_t count;                /* 1..EL_MAX_CHANNELS */
    const uint8_t *values_le;     /* see el_sensor_i16() / el_sensor_f32() */
} el_sensor;

typedef struct {
    int16_t action;               /* index into the model's labels, or EL_SAFE_ACTION */
    uint8_t source;               /* EL_SOURCE_MODEL or EL_SOURCE_FALLBACK */
    uint8_t reason;               /* EL_REASON_*; unknown (newer) values are accepted */
    uint16_t answers_seq;         /* seq of the SENSOR frame this decides on */
    const char *name;             /* label for logs (UTF-8), may be empty */
    uint8_t name_len;             /* <= EL_MAX_ACTION_NAME */
} el_action;

typedef struct {
    uint16_t code;
    const char *text;
    uint8_t text_len;             /* <= EL_MAX_ERROR_TEXT */
} el_error;

typedef struct {
    const uint8_t *host_nonce;    /* EL_NONCE_LEN bytes */
    const uint8_t *device_nonce;  /* EL_NONCE_LEN bytes, all zero in the host's offer */
} el_session;

typedef struct {
    uint8_t type;                 /* EL_HELLO ... EL_SESSION */
    uint8_t flags;
    uint16_t seq;
    uint32_t t_us;
    union {
        el_hello hello;
        el_sensor sensor;
        el_action action;
        el_error error;
        el_session session;
    } u;
} el_frame;

int16_t el_sensor_i16(const el_sensor *s, uint8_t i);
float el_sensor_f32(const el_sensor *s, uint8_t i);
float el_hello_scale(const el_hello *h, uint8_t i);

/* ---- CRCs, COBS, schema hash ------------------------------------------ */

uint16_t el_crc16_update(uint16_t crc, const uint8_t *data, size_t len); /* start with 0xFFFF */
uint16_t el_crc16(const uint8_t *data, size_t len);                       /* CRC-16/CCITT-FALSE */
uint32_t el_crc32_update(uint32_t crc, const uint8_t *data, size_t len); /* start with 0 */
uint32_t el_crc32(const uint8_t *data, size_t len);                       /* CRC-32/ISO-HDLC */

/* CRC-32 of "<int16|float32>:<names_csv>" (names_csv as in HELLO: "acc_x,acc_y"). 0 for an unknown type. */
uint32_t el_schema_hash(uint8_t sample_type, const char *names_csv, size_t names_len);

/* Canonical COBS; dst needs len + len/254 + 1 bytes. Returns the encoded length (no delimiter). */
size_t el_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst);
/* Returns 1 and the decoded length, or 0 if malformed. dst may equal src (decodes in place). */
int el_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap, size_t *out_len);

/* ---- encoding: each returns the wire length (COBS + 0x00), or 0 if it does not fit in cap
 *      or a field cannot go on the wire (0 or > 32 channels, action < -1, source > 1, ...) ---- */

size_t el_encode_raw(uint8_t *out, size_t cap, uint8_t version, uint8_t type, uint8_t flags, uint16_t seq,
                     uint32_t t_us, const uint8_t *payload, size_t len);
/* h->scales_le is ignored: the scales come from `scales` (channel_count of them). */
size_t el_encode_hello(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                       const el_hello *h, const float *scales);
size_t el_encode_sensor_i16(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                            const int16_t *values, uint8_t count);
size_t el_encode_sensor_f32(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                            const float *values, uint8_t count);
/* A longer name is cut to EL_MAX_ACTION_NAME bytes at a UTF-8 character boundary. */
size_t el_encode_action(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                        const el_action *a);
size_t el_encode_heartbeat(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags);
/* A longer text is cut to EL_MAX_ERROR_TEXT bytes at a UTF-8 character boundary. */
size_t el_encode_error(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                       const el_error *e);

/* The host's offer (device_nonce NULL: all zero) or the device's answer. Sign it with el_sign(). */
size_t el_encode_session(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                         const uint8_t *host_nonce, const uint8_t *device_nonce);

/* ---- SHA-256, HMAC-SHA256 ------------------------------------------------ */

typedef struct {
    uint32_t h[8];
    uint32_t bytes;               /* message length so far (messages < 512 MB) */
    uint8_t block[64];
    uint8_t used;
} el_sha256;

void el_sha256_init(el_sha256 *s);
void el_sha256_update(el_sha256 *s, const uint8_t *data, size_t len);
void el_sha256_final(el_sha256 *s, uint8_t digest[32]);
/* HMAC in two halves around el_sha256_update() of the message; key_len <= 64. */
void el_hmac_begin(el_sha256 *s, const uint8_t *key, size_t key_len);
void el_hmac_end(el_sha256 *s, const uint8_t *key, size_t key_len, uint8_t mac[32]);

/* ---- a signed link ------------------------------------------------------ */

/*
 * One side's signing state. The session is host_nonce || device_nonce, agreed
 * in one round trip of SESSION frames; every other frame's tag is bound to it,
 * so frames recorded before a reboot, a restart or a safe timeout do not verify
 * in the next session. A device needs one thing across reboots: new_nonce must
 * never give the same nonce twice for a key (a boot counter in EEPROM plus a
 * counter of sessions since boot; or random bytes from a true RNG).
 */
typedef struct {
    uint8_t key[EL_KEY_LEN];
    uint8_t session[EL_SESSION_LEN]; /* all zero: no session */
    uint8_t side;                    /* EL_LINK_DEVICE or EL_LINK_HOST: the link_id this side signs with */
    uint64_t tx_ts;                  /* ts of the last frame signed */
    uint64_t rx_last;                /* highest ts accepted from the peer in this session */
    uint64_t rx_ts;                  /* ts of the frame being checked */
    uint32_t sessions;               /* sessions begun */
    void (*new_nonce)(uint8_t nonce[EL_NONCE_LEN]); /* device side: a never-repeating nonce */
} el_auth;

void el_auth_init(el_auth *a, const uint8_t key[EL_KEY_LEN], uint8_t side,
                  void (*new_nonce)(uint8_t nonce[EL_NONCE_LEN]));
/* Both nonces known: frames of the session can be acted on. */
int el_auth_established(const el_auth *a);
/* Forget the session (the host went silent): its frames are refused from now on. */
void el_auth_end(el_auth *a);
/*
 * Sign, in place, a frame made by any el_encode_*: buf holds its len wire bytes and has room for cap.
 * Returns the new wire length, or 0 if it does not fit (cap >= EL_WIRE_SIZE(payload + EL_AUTH_LEN),
 * payload <= EL_MAX_SIGNED_PAYLOAD) or buf is not a frame.
 */
size_t el_sign(el_auth *a, uint8_t *buf, size_t len, size_t cap);

/* ---- decoding ---------------------------------------------------------- */

/* Decode one COBS frame (the bytes between delimiters) in place: buf is overwritten. */
el_status el_decode_frame(uint8_t *buf, size_t len, el_frame *out);
/* The same at a receiver with a key (auth NULL: none); updates auth (session changes, replay floor). */
el_status el_decode_frame_auth(uint8_t *buf, size_t len, el_frame *out, el_auth *auth);

typedef struct {
    uint32_t frames;        /* valid frames delivered */
    uint32_t crc_errors;
    uint32_t cobs_errors;
    uint32_t oversize;
    uint32_t bad_length;
    uint32_t bad_value;
    uint32_t bad_version;
    uint32_t unknown_type;
    uint32_t seq_gaps;      /* frames missing from the sender's seq numbering */
    uint32_t resyncs;       /* valid frames that followed rejected chunks */
    uint32_t unsigned_frames; /* "unsigned" */
    uint32_t bad_signature;
    uint32_t unbound;
    uint32_t replayed;
    uint32_t no_key;
} el_counters;

typedef struct {
    uint8_t *buf;
    uint16_t cap;
    uint16_t len;
    uint8_t overflow;       /* dropping bytes until the next delimiter */
    uint8_t in_error;       /* a chunk was rejected since the last valid frame */
    uint8_t have_seq;
    uint16_t next_seq;
    el_auth *auth;          /* NULL: no key (set with el_decoder_set_auth) */
    /* the signing check, set with auth: a device that never signs links no SHA-256 code */
    el_status (*verify)(el_auth *auth, const uint8_t *inner, size_t end, uint8_t type);
    el_counters counters;
} el_decoder;

/* buf: cap bytes, EL_MAX_ENCODED for any frame, or EL_RX_SIZE(largest payload you accept). */
void el_decoder_init(el_decoder *d, uint8_t *buf, uint16_t cap);
/* Forget a partial frame and the seq anchor; counters are kept. */
void el_decoder_reset(el_decoder *d);
/* Give the decoder a key: from then on it delivers only frames signed in auth's session. */
void el_decoder_set_auth(el_decoder *d, el_auth *auth);
/* Feed one received byte. Returns 1 when *out holds a valid frame; it stays valid until the next push. */
int el_decoder_push(el_decoder *d, uint8_t byte, el_frame *out);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_LINK_H */
