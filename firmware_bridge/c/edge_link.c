/*
 * edge_link.c - the edge-link protocol, device side (C99 reference). See edge_link.h.
 *
 * The checks in el_decode_frame() run in the order PROTOCOL.md gives, so a
 * malformed frame lands in the same counter here as in the Python decoder.
 */
#include "edge_link.h"

#include <string.h>

#if defined(__AVR__) /* constant tables stay in flash: RAM is 2 KB on an ATmega328P */
#include <avr/pgmspace.h>
#define EL_ROM PROGMEM
#define EL_ROM_U32(p) pgm_read_dword(p)
#else
#define EL_ROM
#define EL_ROM_U32(p) (*(p))
#endif

typedef char el_float_must_be_32_bits[(sizeof(float) == 4) ? 1 : -1];

/* ---- little-endian helpers -------------------------------------------- */

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] | (uint16_t)((uint16_t)p[1] << 8));
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int16_t to_i16(uint16_t u)
{
    return u >= 0x8000u ? (int16_t)((int32_t)u - 65536L) : (int16_t)u;
}

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

int16_t el_sensor_i16(const el_sensor *s, uint8_t i)
{
    return to_i16(rd16(s->values_le + 2u * i));
}

float el_sensor_f32(const el_sensor *s, uint8_t i)
{
    return bits_to_f32(rd32(s->values_le + 4u * i));
}

float el_hello_scale(const el_hello *h, uint8_t i)
{
    return bits_to_f32(rd32(h->scales_le + 4u * i));
}

/* ---- CRCs --------------------------------------------------------------- */
/* Bitwise: no tables, so no flash or RAM cost beyond the code. */

uint16_t el_crc16_update(uint16_t crc, const uint8_t *data, size_t len)
{
    uint8_t bit;
    while (len--) {
        crc ^= (uint16_t)((uint16_t)*data++ << 8);
        for (bit = 0; bit < 8u; bit++) {
            crc = (crc & 0x8000u) ? (uint16_t)((uint16_t)(crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
        }
    }
    return crc;
}

uint16_t el_crc16(const uint8_t *data, size_t len)
{
    return el_crc16_update(0xFFFFu, data, len);
}

uint32_t el_crc32_update(uint32_t crc, const uint8_t *data, size_t len)
{
    uint8_t bit;
    crc = ~crc;
    while (len--) {
        crc ^= *data++;
        for (bit = 0; bit < 8u; bit++) {
            crc = (crc >> 1) ^ (0xEDB88320UL & (0UL - (crc & 1UL)));
        }
    }
    return ~crc;
}

uint32_t el_crc32(const uint8_t *data, size_t len)
{
    return el_crc32_update(0UL, data, len);
}

uint32_t el_schema_hash(uint8_t sample_type, const char *names_csv, size_t names_len)
{
    static const char i16[] = "int16:";
    static const char f32[] = "float32:";
    uint32_t crc;
    if (sample_type == EL_INT16) {
        crc = el_crc32_update(0UL, (const uint8_t *)i16, sizeof i16 - 1u);
    } else if (sample_type == EL_FLOAT32) {
        crc = el_crc32_update(0UL, (const uint8_t *)f32, sizeof f32 - 1u);
    } else {
        return 0UL;
    }
    return el_crc32_update(crc, (const uint8_t *)names_csv, names_len);
}

/* ---- COBS ---------------------------------------------------------------- */

/*
 * A COBS encoder that also runs the CRC, writing straight into the caller's
 * buffer: no separate inner-frame buffer. A full block (code 0xFF) is only
 * closed when another byte follows, which gives the canonical encoding.
 */
typedef struct {
    uint8_t *out;
    size_t cap;
    size_t pos;
    size_t code_pos;
    uint8_t code;
    uint8_t bad;
    uint16_t crc;
} builder;

static void b_begin(builder *b, uint8_t *out, size_t cap)
{
    b->out = out;
    b->cap = cap;
    b->pos = 1;
    b->code_pos = 0;
    b->code = 1;
    b->bad = (uint8_t)(cap < 1u);
    b->crc = 0xFFFFu;
}

static void b_open_block(builder *b)
{
    if (b->pos >= b->cap) {
        b->bad = 1;
        return;
    }
    b->code_pos = b->pos++;
    b->code = 1;
}

static void b_cobs(builder *b, uint8_t x)
{
    if (b->bad) {
        return;
    }
    if (b->code == 0xFFu) {
        b->out[b->code_pos] = 0xFFu;
        b_open_block(b);
        if (b->bad) {
            return;
        }
    }
    if (x == 0u) {
        b->out[b->code_pos] = b->code;
        b_open_block(b);
    } else if (b->pos >= b->cap) {
        b->bad = 1;
    } else {
        b->out[b->pos++] = x;
        b->code++;
    }
}

static void b_put(builder *b, uint8_t x)
{
    b->crc = el_crc16_update(b->crc, &x, 1u);
    b_cobs(b, x);
}

static void b_put16(builder *b, uint16_t v)
{
    b_put(b, (uint8_t)(v & 0xFFu));
    b_put(b, (uint8_t)(v >> 8));
}

static void b_put32(builder *b, uint32_t v)
{
    b_put16(b, (uint16_t)(v & 0xFFFFu));
    b_put16(b, (uint16_t)(v >> 16));
}

static void b_bytes(builder *b, const uint8_t *p, size_t n)
{
    while (n--) {
        b_put(b, *p++);
    }
}

static void b_header(builder *b, uint8_t version, uint8_t type, uint8_t flags, uint16_t seq, uint32_t t_us)
{
    b_put(b, version);
    b_put(b, type);
    b_put(b, flags);
    b_put16(b, seq);
    b_put32(b, t_us);
}

static size_t b_finish(builder *b)
{
    uint16_t crc = b->crc;
    b_cobs(b, (uint8_t)(crc & 0xFFu));
    b_cobs(b, (uint8_t)(crc >> 8));
    if (b->bad || b->pos >= b->cap) {
        return 0u;
    }
    b->out[b->code_pos] = b->code;
    b->out[b->pos++] = 0u;
    return b->pos;
}

size_t el_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst)
{
    builder b;
    b_begin(&b, dst, len + len / 254u + 1u); /* the most canonical COBS can need */
    while (len--) {
        b_cobs(&b, *src++);
    }
    dst[b.code_pos] = b.code;
    return b.pos;
}

int el_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap, size_t *out_len)
{
    size_t i = 0, o = 0, n;
    uint8_t code;
    while (i < len) {
        code = src[i++];
        if (code == 0u) {
            return 0;
        }
        n = (size_t)code - 1u;
        if (n > len - i || n > cap - o) {
            return 0;
        }
        while (n--) {
            dst[o++] = src[i++]; /* forward copy: safe in place, o < i */
        }
        if (code != 0xFFu && i < len) {
            if (o >= cap) {
                return 0;
            }
            dst[o++] = 0u;
        }
    }
    *out_len = o;
    return 1;
}

/* ---- encoding ------------------------------------------------------------ */

static size_t utf8_cut(const char *text, size_t len, size_t limit)
{
    if (len <= limit) {
        return len;
    }
    while (limit > 0u && ((uint8_t)text[limit] & 0xC0u) == 0x80u) {
        limit--;
    }
    return limit;
}

size_t el_encode_raw(uint8_t *out, size_t cap, uint8_t version, uint8_t type, uint8_t flags, uint16_t seq,
                     uint32_t t_us, const uint8_t *payload, size_t len)
{
    builder b;
    if (len > EL_MAX_PAYLOAD) {
        return 0u;
    }
    b_begin(&b, out, cap);
    b_header(&b, version, type, flags, seq, t_us);
    b_bytes(&b, payload, len);
    return b_finish(&b);
}

size_t el_encode_hello(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                       const el_hello *h, const float *scales)
{
    builder b;
    uint8_t i;
    size_t names_len = h->names ? h->names_len : 0u;
    if (h->channel_count == 0u || h->channel_count > EL_MAX_CHANNELS ||
        15u + 4u * (size_t)h->channel_count + 1u + names_len > EL_MAX_PAYLOAD) {
        return 0u;
    }
    b_begin(&b, out, cap);
    b_header(&b, EL_VERSION, EL_HELLO, flags, seq, t_us);
    b_put(&b, h->fw_major);
    b_put(&b, h->fw_minor);
    b_put(&b, h->fw_patch);
    b_put(&b, h->channel_count);
    b_put(&b, h->sample_type);
    b_put32(&b, h->sample_rate_millihz);
    b_put32(&b, h->schema_hash);
    b_put16(&b, h->safe_timeout_ms);
    for (i = 0; i < h->channel_count; i++) {
        b_put32(&b, f32_to_bits(scales[i]));
    }
    b_put(&b, (uint8_t)names_len);
    b_bytes(&b, (const uint8_t *)h->names, names_len);
    return b_finish(&b);
}

static size_t encode_sensor(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                            uint8_t sample_type, const int16_t *i16, const float *f32, uint8_t count)
{
    builder b;
    uint8_t i;
    if (count == 0u || count > EL_MAX_CHANNELS) {
        return 0u;
    }
    b_begin(&b, out, cap);
    b_header(&b, EL_VERSION, EL_SENSOR, flags, seq, t_us);
    b_put(&b, sample_type);
    for (i = 0; i < count; i++) {
        if (i16) {
            b_put16(&b, (uint16_t)i16[i]);
        } else {
            b_put32(&b, f32_to_bits(f32[i]));
        }
    }
    return b_finish(&b);
}

size_t el_encode_sensor_i16(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                            const int16_t *values, uint8_t count)
{
    return encode_sensor(out, cap, seq, t_us, flags, EL_INT16, values, NULL, count);
}

size_t el_encode_sensor_f32(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                            const float *values, uint8_t count)
{
    return encode_sensor(out, cap, seq, t_us, flags, EL_FLOAT32, NULL, values, count);
}

size_t el_encode_action(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                        const el_action *a)
{
    builder b;
    size_t name_len = a->name ? utf8_cut(a->name, a->name_len, EL_MAX_ACTION_NAME) : 0u;
    if (a->action < EL_SAFE_ACTION || a->source > EL_SOURCE_FALLBACK) {
        return 0u;
    }
    b_begin(&b, out, cap);
    b_header(&b, EL_VERSION, EL_ACTION, flags, seq, t_us);
    b_put16(&b, (uint16_t)a->action);
    b_put(&b, a->source);
    b_put(&b, a->reason);
    b_put16(&b, a->answers_seq);
    b_put(&b, (uint8_t)name_len);
    b_bytes(&b, (const uint8_t *)a->name, name_len);
    return b_finish(&b);
}

size_t el_encode_heartbeat(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags)
{
    return el_encode_raw(out, cap, EL_VERSION, EL_HEARTBEAT, flags, seq, t_us, NULL, 0u);
}

size_t el_encode_error(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                       const el_error *e)
{
    builder b;
    size_t text_len = e->text ? utf8_cut(e->text, e->text_len, EL_MAX_ERROR_TEXT) : 0u;
    b_begin(&b, out, cap);
    b_header(&b, EL_VERSION, EL_ERROR, flags, seq, t_us);
    b_put16(&b, e->code);
    b_put(&b, (uint8_t)text_len);
    b_bytes(&b, (const uint8_t *)e->text, text_len);
    return b_finish(&b);
}

size_t el_encode_session(uint8_t *out, size_t cap, uint16_t seq, uint32_t t_us, uint8_t flags,
                         const uint8_t *host_nonce, const uint8_t *device_nonce)
{
    uint8_t payload[EL_SESSION_LEN];
    memcpy(payload, host_nonce, EL_NONCE_LEN);
    if (device_nonce) {
        memcpy(payload + EL_NONCE_LEN, device_nonce, EL_NONCE_LEN);
    } else {
        memset(payload + EL_NONCE_LEN, 0, EL_NONCE_LEN);
    }
    return el_encode_raw(out, cap, EL_VERSION, EL_SESSION, flags, seq, t_us, payload, sizeof payload);
}

/* ---- SHA-256 (FIPS 180-4), HMAC (RFC 2104) -------------------------------- */
/* A 16-word rolling message schedule: 64 bytes of stack, not 256, for small MCUs. */

static const uint32_t K256[64] EL_ROM = {
    0x428a2f98UL, 0x71374491UL, 0xb5c0fbcfUL, 0xe9b5dba5UL, 0x3956c25bUL, 0x59f111f1UL, 0x923f82a4UL,
    0xab1c5ed5UL, 0xd807aa98UL, 0x12835b01UL, 0x243185beUL, 0x550c7dc3UL, 0x72be5d74UL, 0x80deb1feUL,
    0x9bdc06a7UL, 0xc19bf174UL, 0xe49b69c1UL, 0xefbe4786UL, 0x0fc19dc6UL, 0x240ca1ccUL, 0x2de92c6fUL,
    0x4a7484aaUL, 0x5cb0a9dcUL, 0x76f988daUL, 0x983e5152UL, 0xa831c66dUL, 0xb00327c8UL, 0xbf597fc7UL,
    0xc6e00bf3UL, 0xd5a79147UL, 0x06ca6351UL, 0x14292967UL, 0x27b70a85UL, 0x2e1b2138UL, 0x4d2c6dfcUL,
    0x53380d13UL, 0x650a7354UL, 0x766a0abbUL, 0x81c2c92eUL, 0x92722c85UL, 0xa2bfe8a1UL, 0xa81a664bUL,
    0xc24b8b70UL, 0xc76c51a3UL, 0xd192e819UL, 0xd6990624UL, 0xf40e3585UL, 0x106aa070UL, 0x19a4c116UL,
    0x1e376c08UL, 0x2748774cUL, 0x34b0bcb5UL, 0x391c0cb3UL, 0x4ed8aa4aUL, 0x5b9cca4fUL, 0x682e6ff3UL,
    0x748f82eeUL, 0x78a5636fUL, 0x84c87814UL, 0x8cc70208UL, 0x90befffaUL, 0xa4506cebUL, 0xbef9a3f7UL,
    0xc67178f2UL,
};

static uint32_t ror(uint32_t x, uint8_t n)
{
    return (x >> n) | (x << (32u - n));
}

static void sha256_block(el_sha256 *s)
{
    uint32_t w[16], v[8], t1, t2, s0, s1;
    uint8_t i, j;
    for (i = 0; i < 16u; i++) {
        w[i] = ((uint32_t)s->block[4u * i] << 24) | ((uint32_t)s->block[4u * i + 1u] << 16) |
               ((uint32_t)s->block[4u * i + 2u] << 8) | (uint32_t)s->block[4u * i + 3u];
    }
    memcpy(v, s->h, sizeof v);
    for (i = 0; i < 64u; i++) {
        if (i >= 16u) {
            j = (uint8_t)(i & 15u);
            s0 = w[(j + 1u) & 15u];
            s1 = w[(j + 14u) & 15u];
            s0 = ror(s0, 7) ^ ror(s0, 18) ^ (s0 >> 3);
            s1 = ror(s1, 17) ^ ror(s1, 19) ^ (s1 >> 10);
            w[j] += s0 + s1 + w[(j + 9u) & 15u];
        }
        t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) + ((v[4] & v[5]) ^ (~v[4] & v[6])) +
             EL_ROM_U32(&K256[i]) + w[i & 15u];
        t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) + ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7u * sizeof v[0]);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (i = 0; i < 8u; i++) {
        s->h[i] += v[i];
    }
}

void el_sha256_init(el_sha256 *s)
{
    static const uint32_t iv[8] EL_ROM = {0x6a09e667UL, 0xbb67ae85UL, 0x3c6ef372UL, 0xa54ff53aUL,
                                          0x510e527fUL, 0x9b05688cUL, 0x1f83d9abUL, 0x5be0cd19UL};
    uint8_t i;
    for (i = 0; i < 8u; i++) {
        s->h[i] = EL_ROM_U32(&iv[i]);
    }
    s->bytes = 0;
    s->used = 0;
}

void el_sha256_update(el_sha256 *s, const uint8_t *data, size_t len)
{
    while (len--) {
        s->block[s->used++] = *data++;
        s->bytes++;
        if (s->used == 64u) {
            sha256_block(s);
            s->used = 0;
        }
    }
}

void el_sha256_final(el_sha256 *s, uint8_t digest[32])
{
    uint32_t bits_hi = s->bytes >> 29, bits_lo = s->bytes << 3;
    uint8_t i;
    s->block[s->used++] = 0x80u;
    if (s->used > 56u) {
        memset(s->block + s->used, 0, 64u - s->used);
        sha256_block(s);
        s->used = 0;
    }
    memset(s->block + s->used, 0, 56u - s->used);
    for (i = 0; i < 4u; i++) {
        s->block[56u + i] = (uint8_t)(bits_hi >> (24u - 8u * i));
        s->block[60u + i] = (uint8_t)(bits_lo >> (24u - 8u * i));
    }
    sha256_block(s);
    for (i = 0; i < 32u; i++) {
        digest[i] = (uint8_t)(s->h[i / 4u] >> (24u - 8u * (i % 4u)));
    }
}

static void hmac_pad(el_sha256 *s, const uint8_t *key, size_t key_len, uint8_t pad)
{
    uint8_t i, x;
    el_sha256_init(s);
    for (i = 0; i < 64u; i++) {
        x = (uint8_t)((i < key_len ? key[i] : 0u) ^ pad);
        el_sha256_update(s, &x, 1u);
    }
}

void el_hmac_begin(el_sha256 *s, const uint8_t *key, size_t key_len)
{
    hmac_pad(s, key, key_len, 0x36u);
}

void el_hmac_end(el_sha256 *s, const uint8_t *key, size_t key_len, uint8_t mac[32])
{
    uint8_t inner[32];
    el_sha256_final(s, inner);
    hmac_pad(s, key, key_len, 0x5cu);
    el_sha256_update(s, inner, sizeof inner);
    el_sha256_final(s, mac);
}

/* ---- a signed link ---------------------------------------------------------- */

static const uint8_t ZERO_SESSION[EL_SESSION_LEN] = {0};

static int all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    while (n--) {
        acc |= *p++;
    }
    return acc == 0u;
}

void el_auth_init(el_auth *a, const uint8_t key[EL_KEY_LEN], uint8_t side,
                  void (*new_nonce)(uint8_t nonce[EL_NONCE_LEN]))
{
    memset(a, 0, sizeof *a);
    memcpy(a->key, key, EL_KEY_LEN);
    a->side = side;
    a->new_nonce = new_nonce;
}

int el_auth_established(const el_auth *a)
{
    return !all_zero(a->session, EL_NONCE_LEN) && !all_zero(a->session + EL_NONCE_LEN, EL_NONCE_LEN);
}

static void auth_begin(el_auth *a, const uint8_t *host_nonce, const uint8_t *device_nonce, uint64_t rx_last,
                       int reset_tx)
{
    memmove(a->session, host_nonce, EL_NONCE_LEN);
    memmove(a->session + EL_NONCE_LEN, device_nonce, EL_NONCE_LEN);
    a->rx_last = rx_last;
    if (reset_tx) {
        a->tx_ts = 0;
    }
    if (el_auth_established(a)) {
        a->sessions++;
    }
}

void el_auth_end(el_auth *a)
{
    auth_begin(a, ZERO_SESSION, ZERO_SESSION, 0, 1);
}

/* The first EL_TAG_LEN bytes of HMAC(key, session || signed). */
static void compute_tag(const el_auth *a, const uint8_t *session, const uint8_t *signed_part, size_t len,
                        uint8_t tag[32])
{
    el_sha256 s;
    el_hmac_begin(&s, a->key, EL_KEY_LEN);
    el_sha256_update(&s, session, EL_SESSION_LEN);
    el_sha256_update(&s, signed_part, len);
    el_hmac_end(&s, a->key, EL_KEY_LEN, tag);
}

static int tag_matches(const el_auth *a, const uint8_t *session, const uint8_t *signed_part, size_t len,
                       const uint8_t *tag)
{
    uint8_t want[32], diff = 0, i;
    compute_tag(a, session, signed_part, len, want);
    for (i = 0; i < EL_TAG_LEN; i++) { /* no early exit: the time does not say how much matched */
        diff |= (uint8_t)(want[i] ^ tag[i]);
    }
    return diff == 0u;
}

static uint64_t rd48(const uint8_t *p)
{
    return (uint64_t)rd32(p) | ((uint64_t)rd16(p + 4) << 32);
}

static el_status auth_session(el_auth *a, const uint8_t *payload, uint64_t ts)
{
    const uint8_t *host = payload, *device = payload + EL_NONCE_LEN;
    uint8_t nonce[EL_NONCE_LEN];
    if (all_zero(host, EL_NONCE_LEN)) {
        return EL_REJECT_BAD_VALUE;
    }
    if (a->side == EL_LINK_DEVICE) { /* the host offers a session */
        if (!all_zero(device, EL_NONCE_LEN)) {
            return EL_REJECT_BAD_VALUE;
        }
        if (memcmp(host, a->session, EL_NONCE_LEN) == 0) {
            return EL_REJECT_REPLAYED; /* the offer of the session we are in */
        }
        if (!a->new_nonce) {
            return EL_REJECT_BAD_VALUE; /* a device without a nonce source cannot begin a session */
        }
        a->new_nonce(nonce);
        auth_begin(a, host, nonce, ts, 1);
        return EL_OK;
    }
    if (all_zero(device, EL_NONCE_LEN)) { /* the host: the device answers our offer */
        return EL_REJECT_BAD_VALUE;
    }
    if (memcmp(host, a->session, EL_NONCE_LEN) != 0 || el_auth_established(a)) {
        return EL_REJECT_REPLAYED;
    }
    auth_begin(a, host, device, ts, 0);
    return EL_OK;
}

/* Checks the trailer of a signed frame whose header and payload are buf[0 .. end). */
static el_status auth_check(el_auth *a, const uint8_t *buf, size_t end, uint8_t type)
{
    size_t signed_len = end + 1u + 6u;
    const uint8_t *tag = buf + signed_len;
    uint64_t ts = rd48(buf + end + 1u);
    if (type == EL_SESSION && end - EL_HEADER_LEN != EL_SESSION_LEN) {
        return EL_REJECT_BAD_LENGTH;
    }
    if (buf[end] != (a->side == EL_LINK_DEVICE ? EL_LINK_HOST : EL_LINK_DEVICE)) {
        return EL_REJECT_BAD_SIGNATURE; /* not signed by the other side: reflected, or a third party */
    }
    if (type == EL_SESSION) {
        if (!tag_matches(a, buf + EL_HEADER_LEN, buf, signed_len, tag)) {
            return EL_REJECT_BAD_SIGNATURE;
        }
        return auth_session(a, buf + EL_HEADER_LEN, ts);
    }
    if (el_auth_established(a) && tag_matches(a, a->session, buf, signed_len, tag)) {
        if (ts <= a->rx_last) {
            return EL_REJECT_REPLAYED;
        }
        a->rx_ts = ts;
        return EL_OK;
    }
    if (tag_matches(a, ZERO_SESSION, buf, signed_len, tag)) {
        return EL_REJECT_UNBOUND;
    }
    return EL_REJECT_BAD_SIGNATURE;
}

size_t el_sign(el_auth *a, uint8_t *buf, size_t len, size_t cap)
{
    size_t n, m, plen, i;
    uint8_t tag[32];
    uint16_t crc;
    if (len < 2u || buf[len - 1u] != 0u || !el_cobs_decode(buf, len - 1u, buf, len, &n) || n < EL_MIN_INNER) {
        return 0u;
    }
    plen = n - EL_MIN_INNER;
    if (plen > EL_MAX_SIGNED_PAYLOAD || cap < EL_WIRE_SIZE(plen + EL_AUTH_LEN) ||
        a->tx_ts >= 0xFFFFFFFFFFFFULL) {
        return 0u;
    }
    m = n - EL_CRC_LEN;
    buf[2] |= EL_FLAG_SIGNED;
    a->tx_ts++;
    buf[m++] = a->side;
    for (i = 0; i < 6u; i++) {
        buf[m++] = (uint8_t)(a->tx_ts >> (8u * i));
    }
    compute_tag(a, (buf[1] == EL_SESSION && plen == EL_SESSION_LEN) ? buf + EL_HEADER_LEN : a->session, buf, m,
                tag);
    memcpy(buf + m, tag, EL_TAG_LEN);
    m += EL_TAG_LEN;
    crc = el_crc16(buf, m);
    buf[m++] = (uint8_t)(crc & 0xFFu);
    buf[m++] = (uint8_t)(crc >> 8);
    /* COBS in place: move the frame to the end; the encoder's writes never overtake its reads there */
    memmove(buf + cap - m, buf, m);
    n = el_cobs_encode(buf + cap - m, m, buf);
    buf[n++] = 0u;
    return n;
}

/* ---- decoding ------------------------------------------------------------ */

static el_status parse_hello(const uint8_t *p, size_t len, el_hello *h)
{
    size_t names_at, k;
    uint8_t names_len, count, empty;
    if (len < 15u) {
        return EL_REJECT_BAD_LENGTH;
    }
    names_at = 15u + 4u * (size_t)p[3];
    if (len < names_at + 1u) {
        return EL_REJECT_BAD_LENGTH;
    }
    names_len = p[names_at];
    if (len != names_at + 1u + names_len) {
        return EL_REJECT_BAD_LENGTH;
    }
    if (p[3] == 0u || p[3] > EL_MAX_CHANNELS || (p[4] != EL_INT16 && p[4] != EL_FLOAT32)) {
        return EL_REJECT_BAD_VALUE;
    }
    if (names_len) { /* names_len names separated by commas, none empty */
        count = 1u;
        empty = 1u;
        for (k = 0; k < names_len; k++) {
            if (p[names_at + 1u + k] == ',') {
                if (empty) {
                    return EL_REJECT_BAD_VALUE;
                }
                count++;
                empty = 1u;
            } else {
                empty = 0u;
            }
        }
        if (empty || count != p[3]) {
            return EL_REJECT_BAD_VALUE;
        }
    }
    h->fw_major = p[0];
    h->fw_minor = p[1];
    h->fw_patch = p[2];
    h->channel_count = p[3];
    h->sample_type = p[4];
    h->sample_rate_millihz = rd32(p + 5);
    h->schema_hash = rd32(p + 9);
    h->safe_timeout_ms = rd16(p + 13);
    h->scales_le = p + 15;
    h->names = (const char *)(p + names_at + 1u);
    h->names_len = names_len;
    return EL_OK;
}

static el_status parse_sensor(const uint8_t *p, size_t len, el_sensor *s)
{
    size_t size, n;
    if (len < 1u) {
        return EL_REJECT_BAD_LENGTH;
    }
    if (p[0] == EL_INT16) {
        size = 2u;
    } else if (p[0] == EL_FLOAT32) {
        size = 4u;
    } else {
        return EL_REJECT_BAD_VALUE;
    }
    n = (len - 1u) / size;
    if ((len - 1u) % size != 0u || n < 1u || n > EL_MAX_CHANNELS) {
        return EL_REJECT_BAD_LENGTH;
    }
    s->sample_type = p[0];
    s->count = (uint8_t)n;
    s->values_le = p + 1;
    return EL_OK;
}

static el_status parse_action(const uint8_t *p, size_t len, el_action *a)
{
    if (len < 7u) {
        return EL_REJECT_BAD_LENGTH;
    }
    if (len != 7u + p[6]) {
        return EL_REJECT_BAD_LENGTH;
    }
    a->action = to_i16(rd16(p));
    if (p[6] > EL_MAX_ACTION_NAME || p[2] > EL_SOURCE_FALLBACK || a->action < EL_SAFE_ACTION) {
        return EL_REJECT_BAD_VALUE;
    }
    a->source = p[2];
    a->reason = p[3];
    a->answers_seq = rd16(p + 4);
    a->name_len = p[6];
    a->name = (const char *)(p + 7);
    return EL_OK;
}

static el_status parse_error(const uint8_t *p, size_t len, el_error *e)
{
    if (len < 3u) {
        return EL_REJECT_BAD_LENGTH;
    }
    if (len != 3u + p[2]) {
        return EL_REJECT_BAD_LENGTH;
    }
    if (p[2] > EL_MAX_ERROR_TEXT) {
        return EL_REJECT_BAD_VALUE;
    }
    e->code = rd16(p);
    e->text_len = p[2];
    e->text = (const char *)(p + 3);
    return EL_OK;
}

static el_status parse_session(const uint8_t *p, size_t len, el_session *s)
{
    if (len != EL_SESSION_LEN) {
        return EL_REJECT_BAD_LENGTH;
    }
    s->host_nonce = p;
    s->device_nonce = p + EL_NONCE_LEN;
    return EL_OK;
}

typedef el_status (*verify_fn)(el_auth *, const uint8_t *, size_t, uint8_t);

static el_status decode(uint8_t *buf, size_t len, el_frame *out, el_auth *auth, verify_fn verify);

el_status el_decode_frame(uint8_t *buf, size_t len, el_frame *out)
{
    return decode(buf, len, out, NULL, NULL);
}

static el_status decode(uint8_t *buf, size_t len, el_frame *out, el_auth *auth, verify_fn verify)
{
    size_t n, plen;
    const uint8_t *p;
    el_status st;
    if (!el_cobs_decode(buf, len, buf, len, &n)) {
        return EL_REJECT_COBS;
    }
    if (n > EL_MAX_INNER) {
        return EL_REJECT_OVERSIZE;
    }
    if (n < EL_MIN_INNER) {
        return EL_REJECT_BAD_LENGTH;
    }
    if (el_crc16(buf, n - EL_CRC_LEN) != rd16(buf + n - EL_CRC_LEN)) {
        return EL_REJECT_CRC;
    }
    if (buf[0] != EL_VERSION) {
        return EL_REJECT_BAD_VERSION;
    }
    out->type = buf[1];
    out->flags = buf[2];
    out->seq = rd16(buf + 3);
    out->t_us = rd32(buf + 5);
    p = buf + EL_HEADER_LEN;
    plen = n - EL_MIN_INNER;
    if (out->type == 0u || out->type > EL_SESSION) {
        return EL_REJECT_UNKNOWN_TYPE;
    }
    if (out->flags & EL_FLAG_SIGNED) {
        if (plen < EL_AUTH_LEN) {
            return EL_REJECT_BAD_LENGTH;
        }
        plen -= EL_AUTH_LEN;
        if (!auth || !verify) {
            return EL_REJECT_NO_KEY;
        }
        st = verify(auth, buf, EL_HEADER_LEN + plen, out->type);
        if (st != EL_OK) {
            return st;
        }
    } else if (auth) {
        return EL_REJECT_UNSIGNED;
    }
    switch (out->type) {
    case EL_HELLO:
        return parse_hello(p, plen, &out->u.hello);
    case EL_SENSOR:
        return parse_sensor(p, plen, &out->u.sensor);
    case EL_ACTION:
        return parse_action(p, plen, &out->u.action);
    case EL_HEARTBEAT:
        return plen == 0u ? EL_OK : EL_REJECT_BAD_LENGTH;
    case EL_ERROR:
        return parse_error(p, plen, &out->u.error);
    default:
        return parse_session(p, plen, &out->u.session);
    }
}

static el_status decode_and_accept(uint8_t *buf, size_t len, el_frame *out, el_auth *auth, verify_fn verify)
{
    el_status st = decode(buf, len, out, auth, verify);
    if (st == EL_OK && auth && out->type != EL_SESSION && auth->rx_ts > auth->rx_last) {
        auth->rx_last = auth->rx_ts; /* delivered: its ts is the new floor */
    }
    return st;
}

el_status el_decode_frame_auth(uint8_t *buf, size_t len, el_frame *out, el_auth *auth)
{
    return decode_and_accept(buf, len, out, auth, auth_check);
}

/* ---- the incremental decoder -------------------------------------------- */

void el_decoder_init(el_decoder *d, uint8_t *buf, uint16_t cap)
{
    memset(d, 0, sizeof *d);
    d->buf = buf;
    d->cap = cap;
}

void el_decoder_set_auth(el_decoder *d, el_auth *auth)
{
    d->auth = auth;
    d->verify = auth ? auth_check : NULL;
}

void el_decoder_reset(el_decoder *d)
{
    d->len = 0;
    d->overflow = 0;
    d->have_seq = 0;
}

static void count_reject(el_decoder *d, el_status why)
{
    el_counters *c = &d->counters;
    switch (why) {
    case EL_REJECT_COBS: c->cobs_errors++; break;
    case EL_REJECT_CRC: c->crc_errors++; break;
    case EL_REJECT_OVERSIZE: c->oversize++; break;
    case EL_REJECT_BAD_LENGTH: c->bad_length++; break;
    case EL_REJECT_BAD_VALUE: c->bad_value++; break;
    case EL_REJECT_BAD_VERSION: c->bad_version++; break;
    case EL_REJECT_UNKNOWN_TYPE: c->unknown_type++; break;
    case EL_REJECT_UNSIGNED: c->unsigned_frames++; return; /* an intact frame refused: no loss of sync */
    case EL_REJECT_NO_KEY: c->no_key++; return;
    case EL_REJECT_BAD_SIGNATURE: c->bad_signature++; return;
    case EL_REJECT_UNBOUND: c->unbound++; return;
    case EL_REJECT_REPLAYED: c->replayed++; return;
    case EL_OK: return;
    }
    d->in_error = 1;
}

int el_decoder_push(el_decoder *d, uint8_t byte, el_frame *out)
{
    el_status st;
    uint16_t gap;
    size_t len;
    if (byte != 0u) {
        if (d->overflow) {
            return 0;
        }
        if (d->len >= d->cap) { /* too long for any frame: drop it, resync at the next 0x00 */
            d->overflow = 1;
            d->len = 0;
            count_reject(d, EL_REJECT_OVERSIZE);
            return 0;
        }
        d->buf[d->len++] = byte;
        return 0;
    }
    if (d->overflow || d->len == 0u) { /* end of a dropped chunk, or idle fill */
        d->overflow = 0;
        return 0;
    }
    len = d->len;
    d->len = 0;
    st = decode_and_accept(d->buf, len, out, d->auth, d->verify);
    if (st != EL_OK) {
        count_reject(d, st);
        return 0;
    }
    if (d->have_seq && out->type != EL_HELLO) {
        gap = (uint16_t)(out->seq - d->next_seq);
        if (gap < 0x8000u) {
            d->counters.seq_gaps += gap;
        }
    }
    d->have_seq = 1;
    d->next_seq = (uint16_t)(out->seq + 1u);
    d->counters.frames++;
    if (d->in_error) {
        d->counters.resyncs++;
        d->in_error = 0;
    }
    return 1;
}
