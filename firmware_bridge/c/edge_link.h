/*
 * edge_link.h - the edge-link protocol, device side (C99 reference).
 *
 * Framing, CRCs and frame encode/decode for the serial link between a
 * sensor board and the edge-infer runtime. The spec is ../PROTOCOL.md; the
 * Python twin is ../protocol.py and ../stream.py, and both pass the shared
 * vectors in ../test_vectors.txt (see test_vectors.c).
 *
 * Made for small MCUs: no heap, no libc beyond string.h, every buffer is
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

#define EL_INT16 1u   /* physical = raw * scale */
#define EL_FLOAT32 2u

#define EL_SOURCE_MODEL 0u
#define EL_SOURCE_FALLBACK 1u
#define EL_SAFE_ACTION (-1) /* ACTION code: "go to your own safe default" */

#define EL_FLAG_DEVICE_SAFE 0x01u /* device -> host: the device is in its safe state */

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
    EL_REJECT_UNKNOWN_TYPE  /* unknown_type */
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
    uint8_t type;                 /* EL_HELLO ... EL_ERROR */
    uint8_t flags;
    uint16_t seq;
    uint32_t t_us;
    union {
        el_hello hello;
        el_sensor sensor;
        el_action action;
        el_error error;
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

/* ---- decoding ---------------------------------------------------------- */

/* Decode one COBS frame (the bytes between delimiters) in place: buf is overwritten. */
el_status el_decode_frame(uint8_t *buf, size_t len, el_frame *out);

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
} el_counters;

typedef struct {
    uint8_t *buf;
    uint16_t cap;
    uint16_t len;
    uint8_t overflow;       /* dropping bytes until the next delimiter */
    uint8_t in_error;       /* a chunk was rejected since the last valid frame */
    uint8_t have_seq;
    uint16_t next_seq;
    el_counters counters;
} el_decoder;

/* buf: cap bytes, EL_MAX_ENCODED for any frame, or EL_RX_SIZE(largest payload you accept). */
void el_decoder_init(el_decoder *d, uint8_t *buf, uint16_t cap);
/* Forget a partial frame and the seq anchor; counters are kept. */
void el_decoder_reset(el_decoder *d);
/* Feed one received byte. Returns 1 when *out holds a valid frame; it stays valid until the next push. */
int el_decoder_push(el_decoder *d, uint8_t byte, el_frame *out);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_LINK_H */
