/*
 * sim_device.c - a "firmware" process for hardware-in-the-loop style tests.
 *
 * Plays a recorded CSV log (t,<channels...>[,label]) as an edge-link device
 * would: HELLO, then one SENSOR frame per row at the log's pace, reading
 * ACTION and HEARTBEAT frames from the host, going to its safe state when
 * the host is silent and saying HELLO again when it comes back. All
 * protocol work is done by edge_link.c, the code that runs on the boards;
 * this file is only the POSIX harness around it (files, clocks, a tty).
 *
 *   sim_device LOG [--port PATH] [--speed FACTOR|max] [--int16] [--linger S] [--safe-ms MS]
 *
 * With --port the device talks over that tty (a pty slave, a USB serial
 * adapter, ...) and prints its summary to stdout; without it, it writes
 * frames to stdout, reads stdin and prints the summary to stderr. The
 * summary is one JSON line. After the last row it waits up to --linger
 * seconds (default 1) for the ACTIONs still owed, then exits. SIGINT and
 * SIGTERM end it early, with the summary. Exit status: 0, or 2 for bad
 * arguments or an unreadable log.
 *
 * Build: gcc -std=c99 -Wall -Wextra -Werror -pedantic -o sim_device sim_device.c edge_link.c
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "edge_link.h"

#define MAX_ROWS 200000
#define LINE_LEN 4096
#define HEARTBEAT_S 0.25

static const char *const REASONS[] = {
    "none", "deadline", "busy", "model_error", "no_data", "low_confidence", "non_finite",
    "out_of_range", "saturated", "stuck", "gap", "stale", "out_of_distribution", "shutdown", "overrun",
};
#define N_REASONS (sizeof REASONS / sizeof REASONS[0])

/* ---- the log ------------------------------------------------------------ */

static double *times;
static float *values; /* rows x channels */
static size_t n_rows, bad_rows;
static int n_channels;
static char names[LINE_LEN];
static size_t names_len;

static int load_log(const char *path)
{
    FILE *fp = fopen(path, "r");
    static char line[LINE_LEN];
    int t_col = -1, label_col = -1, col, n_cols = 0;
    char *tok, *save, *end;
    if (!fp) {
        fprintf(stderr, "sim_device: cannot read log %s: %s\n", path, strerror(errno));
        return 0;
    }
    if (!fgets(line, sizeof line, fp)) {
        fprintf(stderr, "sim_device: log %s is empty\n", path);
        fclose(fp);
        return 0;
    }
    line[strcspn(line, "\r\n")] = '\0';
    for (tok = strtok_r(line, ",", &save), col = 0; tok; tok = strtok_r(NULL, ",", &save), col++) {
        if (strcmp(tok, "t") == 0) {
            t_col = col;
        } else if (strcmp(tok, "label") == 0) {
            label_col = col;
        } else {
            if (n_channels == (int)EL_MAX_CHANNELS) {
                fprintf(stderr, "sim_device: log %s has more than %u channels\n", path, EL_MAX_CHANNELS);
                fclose(fp);
                return 0;
            }
            names_len += (size_t)snprintf(names + names_len, sizeof names - names_len, "%s%s",
                                          n_channels ? "," : "", tok);
            n_channels++;
        }
        n_cols++;
    }
    if (t_col < 0 || n_channels == 0) {
        fprintf(stderr, "sim_device: log %s: the header needs a 't' column and at least one channel\n", path);
        fclose(fp);
        return 0;
    }
    times = malloc(MAX_ROWS * sizeof *times);
    values = malloc((size_t)MAX_ROWS * (size_t)n_channels * sizeof *values);
    if (!times || !values) {
        fprintf(stderr, "sim_device: out of memory\n");
        fclose(fp);
        return 0;
    }
    while (fgets(line, sizeof line, fp) && n_rows < MAX_ROWS) {
        int ch = 0, ok = 1;
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0]) {
            continue;
        }
        for (tok = strtok_r(line, ",", &save), col = 0; tok && ok; tok = strtok_r(NULL, ",", &save), col++) {
            double v;
            if (col == label_col) {
                continue;
            }
            v = strtod(tok, &end);
            if (end == tok || *end) {
                ok = 0;
            } else if (col == t_col) {
                times[n_rows] = v;
            } else if (ch < n_channels) {
                values[n_rows * (size_t)n_channels + (size_t)ch++] = (float)v;
            }
        }
        if (ok && col == n_cols && ch == n_channels) {
            n_rows++;
        } else {
            bad_rows++;
        }
    }
    fclose(fp);
    return 1;
}

/* ---- the link ------------------------------------------------------------ */

static int in_fd = 0, out_fd = 1, input_closed, on_port;
static volatile sig_atomic_t stop_signal;
static int link_lost;

static el_decoder rx;
static uint8_t rx_buf[EL_MAX_ENCODED];
static uint8_t tx[EL_MAX_WIRE];
static uint16_t tx_seq;
static int safe_state = 1, host_present;
static double last_host, last_tx;
static unsigned safe_ms = EL_DEFAULT_SAFE_TIMEOUT_MS;
static el_hello hello;
static float scales[EL_MAX_CHANNELS];
static int as_int16;

/* summary counts */
static unsigned long frames_sent, hellos_sent, heartbeats_sent, actions_received, actions_bad;
static unsigned long heartbeats_received, safe_entries, actions_safe, other_received;
static unsigned long by_source[2], by_reason[256];
static uint8_t sent_seqs[65536 / 8], answered[65536 / 8];
static unsigned long owed; /* SENSOR frames sent and not yet answered */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The device clock is the log's: t of the last SENSOR row sent, in microseconds. */
static uint32_t log_us;

static uint32_t clock_us(void)
{
    return log_us;
}

static void on_signal(int sig)
{
    stop_signal = sig;
}

static void send(size_t n)
{
    size_t done = 0;
    if (n == 0 || link_lost) {
        return;
    }
    while (done < n) {
        ssize_t w = write(out_fd, tx + done, n - done);
        if (w < 0 && errno == EINTR) {
            if (stop_signal) {
                return;
            }
            continue;
        }
        if (w <= 0) {
            link_lost = 1;
            return;
        }
        done += (size_t)w;
    }
    tx_seq++;
    last_tx = now_s();
}

static uint8_t flags(void)
{
    return safe_state ? (uint8_t)EL_FLAG_DEVICE_SAFE : (uint8_t)0u;
}

static void send_hello(void)
{
    send(el_encode_hello(tx, sizeof tx, tx_seq, clock_us(), flags(), &hello, scales));
    hellos_sent++;
}

static void enter_safe(void)
{
    if (!safe_state) {
        safe_entries++;
    }
    safe_state = 1;
}

static void on_frame(const el_frame *f)
{
    if (!host_present) { /* the host (re)appeared: tell it who we are */
        host_present = 1;
        send_hello();
    }
    last_host = now_s();
    if (f->type == EL_HEARTBEAT) {
        heartbeats_received++;
    } else if (f->type == EL_ACTION) {
        const el_action *a = &f->u.action;
        unsigned s = a->answers_seq;
        actions_received++;
        if (!(sent_seqs[s / 8] & (1u << (s % 8)))) {
            actions_bad++; /* answers a SENSOR frame this device never sent (rejected frames add to it) */
            return;
        }
        if (!(answered[s / 8] & (1u << (s % 8)))) {
            answered[s / 8] = (uint8_t)(answered[s / 8] | (1u << (s % 8)));
            owed--;
        }
        by_source[a->source]++;
        by_reason[a->reason]++;
        if (a->action == EL_SAFE_ACTION) {
            actions_safe++;
            enter_safe();
        } else {
            safe_state = 0;
        }
    } else {
        other_received++;
    }
}

/* Reads what the host sent within `timeout` seconds; returns 0 when the link is gone. */
static int pump(double timeout)
{
    struct pollfd p;
    uint8_t buf[512];
    el_frame f;
    ssize_t n, i;
    int ms = timeout <= 0 ? 0 : (int)(timeout * 1000.0) + 1;
    p.fd = input_closed ? -1 : in_fd; /* a negative fd is ignored: poll() just sleeps */
    p.events = POLLIN;
    if (poll(&p, 1, ms) <= 0) {
        return 1;
    }
    n = read(in_fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        return 1;
    }
    if (n == 0 && !on_port) { /* stdin closed: the host sends nothing more, keep sending */
        input_closed = 1;
        return 1;
    }
    if (n <= 0) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (el_decoder_push(&rx, buf[i], &f)) {
            on_frame(&f);
        }
    }
    return 1;
}

/* Decodes what the host already sent and nobody read yet, without waiting: a stop right after the host's
 * last write must still count that write (bounded, so a host that never stops talking cannot hold us). */
static void drain_input(void)
{
    struct pollfd p;
    int rounds;
    for (rounds = 0; rounds < 64 && !input_closed; rounds++) {
        p.fd = in_fd;
        p.events = POLLIN;
        if (poll(&p, 1, 0) <= 0 || !pump(0.0)) {
            return;
        }
    }
}

/* Waits until `until` (monotonic seconds), serving the host meanwhile. Returns 0 to stop. */
static int idle_until(double until)
{
    double now;
    while (!stop_signal && !link_lost && (now = now_s()) < until) {
        double next = until;
        if (host_present && now - last_host > safe_ms / 1000.0) {
            host_present = 0;
            enter_safe();
        }
        if (now - last_tx >= HEARTBEAT_S) {
            send(el_encode_heartbeat(tx, sizeof tx, tx_seq, clock_us(), flags()));
            heartbeats_sent++;
        }
        if (last_tx + HEARTBEAT_S < next) {
            next = last_tx + HEARTBEAT_S;
        }
        if (!pump(next - now)) {
            link_lost = 1;
        }
    }
    return !stop_signal && !link_lost;
}

static void send_row(size_t row)
{
    const float *v = values + row * (size_t)n_channels;
    double rel = times[row] - times[0];
    uint32_t t_us = (uint32_t)((unsigned long long)(rel > 0 ? rel * 1e6 + 0.5 : 0.0) & 0xFFFFFFFFULL);
    unsigned s = tx_seq;
    size_t n;
    log_us = t_us;
    if (as_int16) {
        int16_t raw[EL_MAX_CHANNELS];
        int c;
        for (c = 0; c < n_channels; c++) {
            double x = v[c] / scales[c];
            x = x > 32767.0 ? 32767.0 : x < -32768.0 ? -32768.0 : x;
            raw[c] = x == x ? (int16_t)(x < 0 ? x - 0.5 : x + 0.5) : 0; /* NaN -> 0 */
        }
        n = el_encode_sensor_i16(tx, sizeof tx, tx_seq, t_us, flags(), raw, (uint8_t)n_channels);
    } else {
        n = el_encode_sensor_f32(tx, sizeof tx, tx_seq, t_us, flags(), v, (uint8_t)n_channels);
    }
    send(n);
    if (!link_lost) {
        if (answered[s / 8] & (1u << (s % 8))) { /* seq reused after a wrap */
            answered[s / 8] = (uint8_t)(answered[s / 8] & ~(1u << (s % 8)));
        } else if (sent_seqs[s / 8] & (1u << (s % 8))) {
            owed--;
        }
        sent_seqs[s / 8] = (uint8_t)(sent_seqs[s / 8] | (1u << (s % 8)));
        owed++;
        frames_sent++;
    }
}

static void print_summary(FILE *out, const char *end)
{
    const el_counters *c = &rx.counters;
    unsigned r;
    int first = 1;
    fprintf(out, "{\"frames_sent\": %lu, \"hellos_sent\": %lu, \"heartbeats_sent\": %lu, "
                 "\"actions_received\": %lu, \"actions_bad\": %lu, \"actions_unanswered\": %lu, "
                 "\"actions_safe\": %lu, \"heartbeats_received\": %lu, \"other_received\": %lu, "
                 "\"safe_entries\": %lu, \"bad_rows\": %lu, \"end\": \"%s\", "
                 "\"action_sources\": {\"model\": %lu, \"fallback\": %lu}, \"action_reasons\": {",
            frames_sent, hellos_sent, heartbeats_sent, actions_received,
            actions_bad + c->crc_errors + c->cobs_errors + c->oversize + c->bad_length + c->bad_value +
                c->bad_version + c->unknown_type,
            owed, actions_safe,
            heartbeats_received, other_received, safe_entries, (unsigned long)bad_rows, end, by_source[0],
            by_source[1]);
    for (r = 0; r < 256; r++) {
        if (by_reason[r]) {
            if (r < N_REASONS) {
                fprintf(out, "%s\"%s\": %lu", first ? "" : ", ", REASONS[r], by_reason[r]);
            } else {
                fprintf(out, "%s\"%u\": %lu", first ? "" : ", ", r, by_reason[r]);
            }
            first = 0;
        }
    }
    fprintf(out, "}, \"link\": {\"frames\": %lu, \"crc_errors\": %lu, \"cobs_errors\": %lu, \"oversize\": %lu, "
                 "\"bad_length\": %lu, \"bad_value\": %lu, \"bad_version\": %lu, \"unknown_type\": %lu, "
                 "\"seq_gaps\": %lu, \"resyncs\": %lu}}\n",
            (unsigned long)c->frames, (unsigned long)c->crc_errors, (unsigned long)c->cobs_errors,
            (unsigned long)c->oversize, (unsigned long)c->bad_length, (unsigned long)c->bad_value,
            (unsigned long)c->bad_version, (unsigned long)c->unknown_type, (unsigned long)c->seq_gaps,
            (unsigned long)c->resyncs);
    fflush(out);
}

static int open_port(const char *path)
{
    struct termios tio;
    int fd = open(path, O_RDWR | O_NOCTTY);
    if (fd < 0) {
        fprintf(stderr, "sim_device: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (tcgetattr(fd, &tio) == 0) { /* raw 8N1: the link is binary */
        tio.c_iflag &= (tcflag_t) ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXOFF);
        tio.c_oflag &= (tcflag_t) ~OPOST;
        tio.c_lflag &= (tcflag_t) ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
        tio.c_cflag &= (tcflag_t) ~(CSIZE | PARENB);
        tio.c_cflag |= CS8 | CLOCAL | CREAD;
        tio.c_cc[VMIN] = 1;
        tio.c_cc[VTIME] = 0;
        tcsetattr(fd, TCSANOW, &tio);
    }
    return fd;
}

static int usage(const char *msg)
{
    fprintf(stderr, "sim_device: %s\nusage: sim_device LOG [--port PATH] [--speed FACTOR|max] [--int16] "
                    "[--linger S] [--safe-ms MS]\n", msg);
    return 2;
}

int main(int argc, char **argv)
{
    const char *log_path = NULL, *port = NULL, *end = "end_of_log";
    double speed = 1.0, linger = 1.0, start, t;
    int i, c;
    size_t row;
    struct sigaction sa;
    FILE *summary = stderr;

    for (i = 1; i < argc; i++) {
        int more = i + 1 < argc;
        if (!strcmp(argv[i], "--port") && more) {
            port = argv[++i];
        } else if (!strcmp(argv[i], "--speed") && more) {
            ++i;
            speed = !strcmp(argv[i], "max") ? 0.0 : strtod(argv[i], NULL);
            if (strcmp(argv[i], "max") && !(speed > 0.0)) {
                return usage("--speed takes a positive factor or 'max'");
            }
        } else if (!strcmp(argv[i], "--linger") && more) {
            linger = strtod(argv[++i], NULL);
        } else if (!strcmp(argv[i], "--safe-ms") && more) {
            safe_ms = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--int16")) {
            as_int16 = 1;
        } else if (argv[i][0] == '-' || log_path) {
            return usage("unknown or incomplete argument");
        } else {
            log_path = argv[i];
        }
    }
    if (!log_path) {
        return usage("no log given");
    }
    if (!load_log(log_path)) {
        return 2;
    }
    if (n_rows == 0) {
        fprintf(stderr, "sim_device: log %s has no usable rows\n", log_path);
        return 2;
    }
    if (port) {
        in_fd = out_fd = open_port(port);
        on_port = 1;
        if (in_fd < 0) {
            return 2;
        }
        summary = stdout;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns, the loop sees the flag */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    for (c = 0; c < n_channels; c++) { /* int16: the largest magnitude maps to 32767 */
        float peak = 0.0f;
        for (row = 0; row < n_rows && as_int16; row++) {
            float v = values[row * (size_t)n_channels + (size_t)c];
            v = v < 0 ? -v : v;
            peak = v > peak ? v : peak; /* NaN never wins a comparison */
        }
        scales[c] = as_int16 && peak > 0.0f && peak < 3.0e38f ? peak / 32767.0f : 1.0f;
    }
    hello.fw_major = 0;
    hello.fw_minor = 1;
    hello.fw_patch = 0;
    hello.channel_count = (uint8_t)n_channels;
    hello.sample_type = as_int16 ? EL_INT16 : EL_FLOAT32;
    t = n_rows > 1 ? (times[n_rows - 1] - times[0]) / (double)(n_rows - 1) : 0.0;
    hello.sample_rate_millihz = t > 0 ? (uint32_t)(1000.0 / t + 0.5) : 0u;
    hello.schema_hash = el_schema_hash(hello.sample_type, names, names_len);
    hello.safe_timeout_ms = (uint16_t)safe_ms;
    hello.names = names;
    /* names only if they fit in the HELLO payload (the hash is what the host checks) */
    hello.names_len = (uint8_t)(15u + 4u * (size_t)n_channels + 1u + names_len <= EL_MAX_PAYLOAD ? names_len : 0u);
    el_decoder_init(&rx, rx_buf, (uint16_t)sizeof rx_buf);

    tx[0] = 0; /* a lone delimiter ends whatever the receiver had half-read */
    if (write(out_fd, tx, 1) != 1) {
        link_lost = 1;
    }
    send_hello();
    start = now_s();
    for (row = 0; row < n_rows && !stop_signal && !link_lost; row++) {
        if (speed > 0.0 && !idle_until(start + (times[row] - times[0]) / speed)) {
            break;
        }
        if (speed == 0.0 && !pump(0.0)) {
            link_lost = 1;
            break;
        }
        send_row(row);
    }
    t = now_s() + linger;
    while (owed > 0 && !stop_signal && !link_lost && now_s() < t) {
        idle_until(now_s() + 0.05 < t ? now_s() + 0.05 : t);
    }
    if (stop_signal) {
        drain_input();
        end = "signal";
    } else if (link_lost) {
        end = "link_lost";
    }
    print_summary(summary, end);
    return 0;
}
