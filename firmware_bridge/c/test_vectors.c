/*
 * test_vectors.c - runs the shared test vectors (../test_vectors.txt) against edge_link.c.
 *
 *   gcc -std=c99 -Wall -Wextra -Werror -pedantic -o test_vectors test_vectors.c edge_link.c
 *   ./test_vectors ../test_vectors.txt
 *   ./test_vectors --decode < streams.hex
 *   ./test_vectors --decode-auth host|device KEY SESSION RX_LAST NONCE < streams.hex
 *
 * Exit status 0 when every check passes, 1 when any fails (each failure is
 * printed), 2 when the file cannot be read. With --decode it reads one hex
 * byte stream per line from stdin and prints, for each, the frames a fresh
 * decoder delivers ("frame <description>"), then "counters ..." and "end":
 * the tests compare that with the Python decoder on random, damaged input. The file format is described
 * in its header; frames are compared through describe(), which must render
 * exactly what firmware_bridge/vectors.py's describe() renders.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge_link.h"

#define LINE_MAX_LEN 65536
#define WIRE_MAX 32768
#define MAX_FRAMES 16
#define DESC_MAX 2048

static char line[LINE_MAX_LEN];
static uint8_t wire[WIRE_MAX];
static size_t wire_len;
static char expected[MAX_FRAMES][DESC_MAX];
static int n_expected;
static char expected_counters[DESC_MAX];
static int roundtrip;
static char vector_name[256];
static int failures, checks;
/* the vector's receiver: a key and a session (has_auth), and the session expected after it */
static int has_auth, has_session_after;
static el_auth auth;
static uint8_t vector_nonce[EL_NONCE_LEN];
static char session_after[DESC_MAX];

static void give_nonce(uint8_t nonce[EL_NONCE_LEN])
{
    memcpy(nonce, vector_nonce, EL_NONCE_LEN);
}

static void fail(const char *what, const char *detail_a, const char *detail_b)
{
    failures++;
    printf("FAIL %s: %s\n", vector_name[0] ? vector_name : "(file)", what);
    if (detail_a) {
        printf("  expected: %s\n", detail_a);
    }
    if (detail_b) {
        printf("  got:      %s\n", detail_b);
    }
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Parses hex (or "-" for empty) into out; returns the length, or (size_t)-1 if malformed. */
static size_t unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;
    if (strcmp(s, "-") == 0) {
        return 0;
    }
    while (s[0] && s[1]) {
        int hi = hexval(s[0]), lo = hexval(s[1]);
        if (hi < 0 || lo < 0 || n >= cap) {
            return (size_t)-1;
        }
        out[n++] = (uint8_t)(hi * 16 + lo);
        s += 2;
    }
    return s[0] ? (size_t)-1 : n;
}

/* Appends printf-style text to buf (of DESC_MAX bytes). */
#define PUT(buf, ...)                                                   \
    do {                                                                \
        size_t used_ = strlen(buf);                                     \
        snprintf((buf) + used_, DESC_MAX - used_, __VA_ARGS__);         \
    } while (0)

static void put_escaped(char *buf, const char *text, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch >= 0x21 && ch <= 0x7e && ch != '%') {
            PUT(buf, "%c", ch);
        } else {
            PUT(buf, "%%%02x", (unsigned)ch);
        }
    }
}

static unsigned long le32(const uint8_t *p)
{
    return (unsigned long)p[0] | ((unsigned long)p[1] << 8) | ((unsigned long)p[2] << 16) |
           ((unsigned long)p[3] << 24);
}

static void describe(const el_frame *f, char *buf)
{
    static const char *names[] = {"?", "HELLO", "SENSOR", "ACTION", "HEARTBEAT", "ERROR", "SESSION"};
    uint8_t i;
    buf[0] = '\0';
    PUT(buf, "%s seq=%u t_us=%lu flags=%u", names[f->type <= 6 ? f->type : 0], (unsigned)f->seq,
        (unsigned long)f->t_us, (unsigned)f->flags);
    if (f->type == EL_HELLO) {
        const el_hello *h = &f->u.hello;
        PUT(buf, " fw=%u.%u.%u sample_type=%u rate_millihz=%lu schema=%08lx safe_ms=%u scales=",
            (unsigned)h->fw_major, (unsigned)h->fw_minor, (unsigned)h->fw_patch, (unsigned)h->sample_type,
            (unsigned long)h->sample_rate_millihz, (unsigned long)h->schema_hash, (unsigned)h->safe_timeout_ms);
        for (i = 0; i < h->channel_count; i++) {
            PUT(buf, i ? ",%08lx" : "%08lx", le32(h->scales_le + 4u * i));
        }
        PUT(buf, " names=");
        put_escaped(buf, h->names, h->names_len);
    } else if (f->type == EL_SENSOR) {
        const el_sensor *s = &f->u.sensor;
        PUT(buf, " sample_type=%u values=", (unsigned)s->sample_type);
        for (i = 0; i < s->count; i++) {
            if (s->sample_type == EL_INT16) {
                PUT(buf, i ? ",%d" : "%d", (int)el_sensor_i16(s, i));
            } else {
                PUT(buf, i ? ",%08lx" : "%08lx", le32(s->values_le + 4u * i));
            }
        }
    } else if (f->type == EL_ACTION) {
        const el_action *a = &f->u.action;
        PUT(buf, " action=%d source=%u reason=%u answers=%u name=", (int)a->action, (unsigned)a->source,
            (unsigned)a->reason, (unsigned)a->answers_seq);
        put_escaped(buf, a->name, a->name_len);
    } else if (f->type == EL_ERROR) {
        PUT(buf, " code=%u text=", (unsigned)f->u.error.code);
        put_escaped(buf, f->u.error.text, f->u.error.text_len);
    } else if (f->type == EL_SESSION) {
        PUT(buf, " host=");
        for (i = 0; i < EL_NONCE_LEN; i++) {
            PUT(buf, "%02x", (unsigned)f->u.session.host_nonce[i]);
        }
        PUT(buf, " device=");
        for (i = 0; i < EL_NONCE_LEN; i++) {
            PUT(buf, "%02x", (unsigned)f->u.session.device_nonce[i]);
        }
    }
}

static void describe_session(const el_auth *a, char *buf)
{
    uint8_t i;
    buf[0] = '\0';
    for (i = 0; i < EL_SESSION_LEN; i++) {
        PUT(buf, "%02x", (unsigned)a->session[i]);
    }
    PUT(buf, " %llu", (unsigned long long)a->rx_last);
}

static void describe_counters(const el_counters *c, char *buf)
{
    buf[0] = '\0';
    PUT(buf, "frames=%lu crc_errors=%lu cobs_errors=%lu oversize=%lu bad_length=%lu bad_value=%lu "
             "bad_version=%lu unknown_type=%lu seq_gaps=%lu resyncs=%lu unsigned=%lu bad_signature=%lu "
             "unbound=%lu replayed=%lu no_key=%lu",
        (unsigned long)c->frames, (unsigned long)c->crc_errors, (unsigned long)c->cobs_errors,
        (unsigned long)c->oversize, (unsigned long)c->bad_length, (unsigned long)c->bad_value,
        (unsigned long)c->bad_version, (unsigned long)c->unknown_type, (unsigned long)c->seq_gaps,
        (unsigned long)c->resyncs, (unsigned long)c->unsigned_frames, (unsigned long)c->bad_signature,
        (unsigned long)c->unbound, (unsigned long)c->replayed, (unsigned long)c->no_key);
}

/* Re-encodes a decoded frame with the typed encoders. */
static size_t reencode(const el_frame *f, uint8_t *out, size_t cap)
{
    float floats[EL_MAX_CHANNELS];
    int16_t ints[EL_MAX_CHANNELS];
    uint8_t i;
    switch (f->type) {
    case EL_HELLO:
        for (i = 0; i < f->u.hello.channel_count; i++) {
            floats[i] = el_hello_scale(&f->u.hello, i);
        }
        return el_encode_hello(out, cap, f->seq, f->t_us, f->flags, &f->u.hello, floats);
    case EL_SENSOR:
        for (i = 0; i < f->u.sensor.count; i++) {
            if (f->u.sensor.sample_type == EL_INT16) {
                ints[i] = el_sensor_i16(&f->u.sensor, i);
            } else {
                floats[i] = el_sensor_f32(&f->u.sensor, i);
            }
        }
        if (f->u.sensor.sample_type == EL_INT16) {
            return el_encode_sensor_i16(out, cap, f->seq, f->t_us, f->flags, ints, f->u.sensor.count);
        }
        return el_encode_sensor_f32(out, cap, f->seq, f->t_us, f->flags, floats, f->u.sensor.count);
    case EL_ACTION:
        return el_encode_action(out, cap, f->seq, f->t_us, f->flags, &f->u.action);
    case EL_HEARTBEAT:
        return el_encode_heartbeat(out, cap, f->seq, f->t_us, f->flags);
    case EL_ERROR:
        return el_encode_error(out, cap, f->seq, f->t_us, f->flags, &f->u.error);
    default:
        return 0;
    }
}

static void run_vector(void)
{
    static uint8_t rxbuf[EL_MAX_ENCODED];
    static uint8_t again[EL_MAX_WIRE];
    static char got[DESC_MAX];
    el_decoder d;
    el_frame f;
    size_t i, again_len = 0;
    int n = 0;
    el_decoder_init(&d, rxbuf, (uint16_t)sizeof rxbuf);
    if (has_auth) {
        el_decoder_set_auth(&d, &auth);
    }
    for (i = 0; i < wire_len; i++) {
        if (!el_decoder_push(&d, wire[i], &f)) {
            continue;
        }
        describe(&f, got);
        checks++;
        if (n >= n_expected) {
            fail("an unexpected frame", "(none)", got);
        } else if (strcmp(got, expected[n]) != 0) {
            fail("frame differs", expected[n], got);
        }
        if (n == 0 && roundtrip) {
            again_len = reencode(&f, again, sizeof again);
        }
        n++;
    }
    checks++;
    if (n < n_expected) {
        fail("a frame is missing", expected[n], "(none)");
    }
    describe_counters(&d.counters, got);
    checks++;
    if (strcmp(got, expected_counters) != 0) {
        fail("counters differ", expected_counters, got);
    }
    if (has_auth && has_session_after) {
        checks++;
        describe_session(&auth, got);
        if (strcmp(got, session_after) != 0) {
            fail("session afterwards differs", session_after, got);
        }
    }
    if (roundtrip) {
        checks++;
        if (again_len != wire_len || memcmp(again, wire, wire_len) != 0) {
            fail("re-encoding does not give the wire bytes", NULL, NULL);
        }
    }
}

static void check_hex_pair(const char *kind, char *rest)
{
    static uint8_t a[WIRE_MAX], b[WIRE_MAX], c[WIRE_MAX];
    char *f1 = strtok(rest, " "), *f2 = strtok(NULL, " "), *f3 = strtok(NULL, " ");
    size_t la, lb, lc;
    char msg[64];
    checks++;
    if (!f1 || !f2) {
        fail("malformed line", kind, NULL);
        return;
    }
    if (strcmp(kind, "schema") == 0) {
        uint8_t type = strcmp(f1, "int16") == 0 ? EL_INT16 : EL_FLOAT32;
        unsigned long want = f3 ? strtoul(f3, NULL, 16) : 0;
        if (el_schema_hash(type, f2, strlen(f2)) != want) {
            fail("schema hash differs", f2, NULL);
        }
        return;
    }
    la = unhex(f1, a, sizeof a);
    if (la == (size_t)-1) {
        fail("bad hex", f1, NULL);
        return;
    }
    if (strcmp(kind, "crc16") == 0) {
        if (el_crc16(a, la) != strtoul(f2, NULL, 16)) {
            sprintf(msg, "%04x", (unsigned)el_crc16(a, la));
            fail("crc16 differs", f2, msg);
        }
    } else if (strcmp(kind, "crc32") == 0) {
        if (el_crc32(a, la) != strtoul(f2, NULL, 16)) {
            sprintf(msg, "%08lx", (unsigned long)el_crc32(a, la));
            fail("crc32 differs", f2, msg);
        }
    } else {
        lb = unhex(f2, b, sizeof b);
        lc = el_cobs_encode(a, la, c);
        if (lc != lb || memcmp(b, c, lb) != 0) {
            fail("cobs encoding differs", f2, NULL);
        }
        checks++;
        if (!el_cobs_decode(b, lb, c, sizeof c, &lc) || lc != la || memcmp(a, c, la) != 0) {
            fail("cobs decoding differs", f1, NULL);
        }
    }
}

/* sha256 <data> <digest> | hmac <key> <data> <mac> */
static void check_hash(const char *kind, char *rest)
{
    static uint8_t a[WIRE_MAX], b[64], want[64];
    char *f1 = strtok(rest, " "), *f2 = strtok(NULL, " "), *f3 = strtok(NULL, " ");
    size_t la, lb = 0, lw;
    uint8_t got[32];
    el_sha256 s;
    int is_hmac = strcmp(kind, "hmac") == 0;
    checks++;
    if (!f1 || !f2 || (is_hmac && !f3)) {
        fail("malformed line", kind, NULL);
        return;
    }
    if (is_hmac) {
        lb = unhex(f1, b, sizeof b);
        la = unhex(f2, a, sizeof a);
        lw = unhex(f3, want, sizeof want);
    } else {
        la = unhex(f1, a, sizeof a);
        lw = unhex(f2, want, sizeof want);
    }
    if (la == (size_t)-1 || lb == (size_t)-1 || lw != 32u) {
        fail("bad hex", kind, NULL);
        return;
    }
    if (is_hmac) {
        el_hmac_begin(&s, b, lb);
        el_sha256_update(&s, a, la);
        el_hmac_end(&s, b, lb, got);
    } else {
        el_sha256_init(&s);
        el_sha256_update(&s, a, la);
        el_sha256_final(&s, got);
    }
    if (memcmp(got, want, 32u) != 0) {
        fail(is_hmac ? "hmac differs" : "sha256 differs", is_hmac ? f3 : f2, NULL);
    }
}

/* sign <key> <session> <link_id> <ts> <unsigned wire> <signed wire> */
static void check_sign(char *rest)
{
    static uint8_t buf[EL_MAX_WIRE], want[EL_MAX_WIRE];
    uint8_t key[EL_KEY_LEN];
    el_auth a;
    char *f[6];
    int i;
    size_t n, lw;
    checks++;
    for (i = 0; i < 6; i++) {
        f[i] = strtok(i ? NULL : rest, " ");
        if (!f[i]) {
            fail("malformed sign line", NULL, NULL);
            return;
        }
    }
    if (unhex(f[0], key, sizeof key) != EL_KEY_LEN) {
        fail("bad key", f[0], NULL);
        return;
    }
    el_auth_init(&a, key, (uint8_t)atoi(f[2]), NULL);
    if (unhex(f[1], a.session, sizeof a.session) != EL_SESSION_LEN) {
        fail("bad session", f[1], NULL);
        return;
    }
    a.tx_ts = strtoull(f[3], NULL, 10) - 1u;
    n = unhex(f[4], buf, sizeof buf);
    lw = unhex(f[5], want, sizeof want);
    if (n == (size_t)-1 || lw == (size_t)-1) {
        fail("bad hex", NULL, NULL);
        return;
    }
    n = el_sign(&a, buf, n, sizeof buf);
    if (n != lw || memcmp(buf, want, lw) != 0) {
        fail("signing differs", f[5], NULL);
    }
}

/* auth <host|device> <key> <session> <rx_last> <nonce|-> */
static void set_auth(char *rest)
{
    static uint8_t key[EL_KEY_LEN];
    char *f[5];
    int i;
    for (i = 0; i < 5; i++) {
        f[i] = strtok(i ? NULL : rest, " ");
        if (!f[i]) {
            fail("malformed auth line", NULL, NULL);
            return;
        }
    }
    if (unhex(f[1], key, sizeof key) != EL_KEY_LEN) {
        fail("bad key", f[1], NULL);
        return;
    }
    el_auth_init(&auth, key, strcmp(f[0], "host") == 0 ? EL_LINK_HOST : EL_LINK_DEVICE,
                 strcmp(f[4], "-") ? give_nonce : NULL);
    if (unhex(f[2], auth.session, sizeof auth.session) != EL_SESSION_LEN ||
        (strcmp(f[4], "-") && unhex(f[4], vector_nonce, sizeof vector_nonce) != EL_NONCE_LEN)) {
        fail("bad auth hex", NULL, NULL);
        return;
    }
    auth.rx_last = strtoull(f[3], NULL, 10);
    has_auth = 1;
}

/* With auth_line ("host|device KEY SESSION RX_LAST NONCE"), each stream starts from that signing state. */
static int decode_stdin(const char *auth_line)
{
    static uint8_t rxbuf[EL_MAX_ENCODED];
    static char desc[DESC_MAX], spec[DESC_MAX];
    el_decoder d;
    el_frame f;
    size_t i, len;
    while (fgets(line, sizeof line, stdin)) {
        if (auth_line) {
            snprintf(spec, sizeof spec, "%s", auth_line);
            set_auth(spec);
            if (!has_auth) {
                return 2;
            }
        }
        line[strcspn(line, "\r\n")] = '\0';
        wire_len = unhex(line, wire, sizeof wire);
        if (wire_len == (size_t)-1) {
            fprintf(stderr, "--decode: bad hex line\n");
            return 2;
        }
        el_decoder_init(&d, rxbuf, (uint16_t)sizeof rxbuf);
        if (auth_line) {
            el_decoder_set_auth(&d, &auth);
        }
        for (i = 0; i < wire_len; i++) {
            if (el_decoder_push(&d, wire[i], &f)) {
                describe(&f, desc);
                printf("frame %s\n", desc);
            }
        }
        describe_counters(&d.counters, desc);
        len = strlen(desc);
        printf("counters %.*s\n", (int)len, desc);
        if (auth_line) {
            describe_session(&auth, desc);
            printf("session %s\n", desc);
        }
        printf("end\n");
    }
    return 0;
}

int main(int argc, char **argv)
{
    FILE *fp;
    int vectors = 0, in_vector = 0;
    if (argc == 2 && strcmp(argv[1], "--decode") == 0) {
        return decode_stdin(NULL);
    }
    if (argc == 7 && strcmp(argv[1], "--decode-auth") == 0) {
        static char spec[DESC_MAX];
        snprintf(spec, sizeof spec, "%s %s %s %s %s", argv[2], argv[3], argv[4], argv[5], argv[6]);
        return decode_stdin(spec);
    }
    if (argc != 2) {
        fprintf(stderr, "usage: %s test_vectors.txt | --decode\n", argv[0]);
        return 2;
    }
    fp = fopen(argv[1], "r");
    if (!fp) {
        perror(argv[1]);
        return 2;
    }
    while (fgets(line, sizeof line, fp)) {
        size_t len = strlen(line);
        char *rest;
        if (len && line[len - 1] != '\n' && !feof(fp)) {
            fprintf(stderr, "%s: a line is longer than %d bytes\n", argv[1], LINE_MAX_LEN);
            fclose(fp);
            return 2;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = '\0';
        }
        if (len == 0 || line[0] == '#') {
            continue;
        }
        rest = strchr(line, ' ');
        if (rest) {
            *rest++ = '\0';
        } else {
            rest = line + len;
        }
        if (!strcmp(line, "crc16") || !strcmp(line, "crc32") || !strcmp(line, "cobs") || !strcmp(line, "schema")) {
            check_hex_pair(line, rest);
        } else if (!strcmp(line, "sha256") || !strcmp(line, "hmac")) {
            check_hash(line, rest);
        } else if (!strcmp(line, "sign")) {
            check_sign(rest);
        } else if (!strcmp(line, "vector")) {
            snprintf(vector_name, sizeof vector_name, "%s", rest);
            wire_len = 0;
            n_expected = 0;
            roundtrip = 0;
            expected_counters[0] = '\0';
            has_auth = has_session_after = 0;
            in_vector = 1;
        } else if (!in_vector) {
            fail("record outside a vector", line, NULL);
        } else if (!strcmp(line, "auth")) {
            set_auth(rest);
        } else if (!strcmp(line, "session")) {
            snprintf(session_after, DESC_MAX, "%s", rest);
            has_session_after = 1;
        } else if (!strcmp(line, "wire")) {
            wire_len = unhex(rest, wire, sizeof wire);
            if (wire_len == (size_t)-1) {
                fail("bad wire hex", NULL, NULL);
                wire_len = 0;
            }
        } else if (!strcmp(line, "frame")) {
            if (n_expected < MAX_FRAMES) {
                snprintf(expected[n_expected++], DESC_MAX, "%s", rest);
            } else {
                fail("too many frames for this test program", NULL, NULL);
            }
        } else if (!strcmp(line, "counters")) {
            snprintf(expected_counters, DESC_MAX, "%s", rest);
        } else if (!strcmp(line, "roundtrip")) {
            roundtrip = 1;
        } else if (!strcmp(line, "end")) {
            run_vector();
            vectors++;
            in_vector = 0;
            vector_name[0] = '\0';
        } else {
            fail("unknown record", line, NULL);
        }
    }
    fclose(fp);
    printf("%d vectors, %d checks, %d failures\n", vectors, checks, failures);
    return failures == 0 && vectors > 0 ? 0 : 1;
}
