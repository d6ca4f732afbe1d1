/*
 * arduino_imu.ino - an edge-link sensor node for the edge-infer runtime.
 *
 * Samples 6 IMU channels at 10 Hz and sends them to the host as SENSOR
 * frames; the host's model answers each one with an ACTION frame. The
 * board obeys the ACTION, and falls back to its own safe state when the
 * host goes quiet for SAFE_TIMEOUT_MS or sends the safe action (-1).
 *
 * The protocol is ../../PROTOCOL.md; everything on the wire is done by
 * edge_link.c/.h, which must sit beside this file when it is compiled
 * (scripts/flash_board.md copies them in). Serial is the link, so nothing
 * else may print to it.
 *
 * Sensor: an MPU-6050 on I2C (define USE_MPU6050), else synthetic samples
 * (slow triangle waves) so the link can be tried with a bare board.
 * Outputs: LED_BUILTIN lights while the board is in its safe state;
 * apply_action() is where a real device would drive its actuators.
 *
 * Signed link (PROTOCOL.md section 13, docs/link-security.md): make the key's
 * header beside this file, `python -m firmware_bridge.keys c-header KEYFILE >
 * link_key.h`, and uncomment the #include below (or pass -DEDGE_LINK_KEY=...).
 * Then every frame goes out signed, only host frames signed in the current
 * session are obeyed, and the board keeps one thing in EEPROM: a boot counter
 * (4 bytes at EEPROM_BOOTS), so that its session nonces never repeat. Keep
 * link_key.h out of version control.
 */
/* #include "link_key.h" */
#include <string.h>

#include "edge_link.h"

#ifdef EDGE_LINK_KEY
#include <EEPROM.h>
#define EEPROM_BOOTS 0 /* 4 bytes: boots since the EEPROM was erased (0xFFFFFFFF counts as 0) */
#define AUTH_LEN EL_AUTH_LEN
#else
#define AUTH_LEN 0u
#endif

/* #define USE_MPU6050 */
#ifdef USE_MPU6050
#include <Wire.h>
#define MPU_ADDR 0x68
#endif

#define BAUD 115200UL
#define SAMPLE_PERIOD_MS 100UL /* 10 Hz: must match the model's sample rate */
#define HEARTBEAT_MS 250UL     /* send a HEARTBEAT after this long without sending anything */
#define SAFE_TIMEOUT_MS EL_DEFAULT_SAFE_TIMEOUT_MS
#define N_CHANNELS 6
#define SAFE_LED LED_BUILTIN

#define FW_MAJOR 0
#define FW_MINOR 1
#define FW_PATCH 0

/* The channel names and order the model was trained with: they make the schema hash. */
static const char NAMES[] = "acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z";
/* raw int16 * scale = the unit the model was trained in. MPU-6050 defaults: +-2 g, +-250 deg/s. */
static const float SCALES[N_CHANNELS] = {
    1.0f / 16384.0f, 1.0f / 16384.0f, 1.0f / 16384.0f, /* g */
    1.0f / 131.0f, 1.0f / 131.0f, 1.0f / 131.0f,       /* deg/s */
};

#define HELLO_PAYLOAD (15u + 4u * N_CHANNELS + 1u + (sizeof NAMES - 1u))
static uint8_t tx[EL_WIRE_SIZE(HELLO_PAYLOAD + AUTH_LEN)];   /* big enough for every frame we send */
/* the host sends ACTION and HEARTBEAT (and, signed, SESSION: 16 bytes, smaller than an ACTION) */
static uint8_t rx_buf[EL_RX_SIZE(EL_ACTION_MAX_PAYLOAD + AUTH_LEN)];
static el_decoder rx;
static el_hello hello;
static uint16_t tx_seq;
static unsigned long last_sample_ms, last_tx_ms, last_host_ms;
static bool host_present; /* a valid frame from the host within SAFE_TIMEOUT_MS */
static bool safe = true;
static int16_t current_action = EL_SAFE_ACTION;

#ifdef EDGE_LINK_KEY
static el_auth auth;
static uint32_t boots, sessions_this_boot;

/* A session nonce that never repeats for this key: the boot counter, then the sessions since boot. */
static void new_nonce(uint8_t nonce[EL_NONCE_LEN])
{
    uint8_t i;
    sessions_this_boot++;
    for (i = 0; i < 4u; i++) {
        nonce[i] = (uint8_t)(boots >> (8u * i));
        nonce[4u + i] = (uint8_t)(sessions_this_boot >> (8u * i));
    }
}

static void count_boot(void)
{
    uint8_t i;
    for (i = 0; i < 4u; i++) {
        boots |= (uint32_t)EEPROM.read(EEPROM_BOOTS + i) << (8u * i);
    }
    boots = boots == 0xFFFFFFFFUL ? 1UL : boots + 1UL; /* written before the first session can use it */
    for (i = 0; i < 4u; i++) {
        EEPROM.update(EEPROM_BOOTS + i, (uint8_t)(boots >> (8u * i)));
    }
}
#endif

/* ---- sending ------------------------------------------------------------ */

static void send(size_t n)
{
#ifdef EDGE_LINK_KEY
    n = n > 0 ? el_sign(&auth, tx, n, sizeof tx) : 0; /* a link with a key never sends an unsigned frame */
#endif
    if (n > 0) {
        Serial.write(tx, n);
        tx_seq++;
        last_tx_ms = millis();
    }
}

static uint8_t flags(void)
{
    return safe ? EL_FLAG_DEVICE_SAFE : 0;
}

static void send_hello(void)
{
    send(el_encode_hello(tx, sizeof tx, tx_seq, micros(), flags(), &hello, SCALES));
}

static void send_error(uint16_t code, const char *text)
{
    el_error e;
    e.code = code;
    e.text = text;
    e.text_len = (uint8_t)strlen(text);
    send(el_encode_error(tx, sizeof tx, tx_seq, micros(), flags(), &e));
}

/* ---- the device's own behaviour ----------------------------------------- */

static void apply_action(int16_t action)
{
    /* A real device drives its outputs here: action indexes the model's labels. */
    current_action = action;
}

static void enter_safe(void)
{
    safe = true;
    apply_action(EL_SAFE_ACTION); /* whatever "safe" means for this machine: stop, hold, ... */
    digitalWrite(SAFE_LED, HIGH);
}

static void leave_safe(void)
{
    safe = false;
    digitalWrite(SAFE_LED, LOW);
}

static void on_host_frame(const el_frame *f)
{
#ifdef EDGE_LINK_KEY
    if (f->type == EL_SESSION) { /* the decoder began a new session: start it safe, tell the host who we are */
        enter_safe();
        host_present = true;
        last_host_ms = millis();
        send(el_encode_session(tx, sizeof tx, tx_seq, micros(), flags(), auth.session,
                               auth.session + EL_NONCE_LEN));
        send_hello();
        return;
    }
#endif
    if (!host_present) { /* the host appeared (or came back): tell it who we are */
        host_present = true;
        send_hello();
    }
    last_host_ms = millis();
    if (f->type == EL_ACTION) {
        if (f->u.action.action == EL_SAFE_ACTION) {
            enter_safe();
        } else {
            leave_safe();
            apply_action(f->u.action.action);
        }
    }
}

/* ---- sampling ----------------------------------------------------------- */

#ifdef USE_MPU6050
static bool read_imu(int16_t v[N_CHANNELS])
{
    int16_t raw[7];
    uint8_t i;
    Wire.beginTransmission(MPU_ADDR);
    Wire.write(0x3B); /* ACCEL_XOUT_H: accel xyz, temperature, gyro xyz, big-endian */
    if (Wire.endTransmission(false) != 0 || Wire.requestFrom(MPU_ADDR, 14) != 14) {
        return false;
    }
    for (i = 0; i < 7; i++) {
        uint8_t hi = Wire.read();
        uint8_t lo = Wire.read();
        raw[i] = (int16_t)(((uint16_t)hi << 8) | lo);
    }
    v[0] = raw[0];
    v[1] = raw[1];
    v[2] = raw[2];
    v[3] = raw[4];
    v[4] = raw[5];
    v[5] = raw[6];
    return true;
}
#else
static bool read_imu(int16_t v[N_CHANNELS])
{
    static uint16_t tick;
    uint8_t c;
    tick++;
    for (c = 0; c < N_CHANNELS; c++) { /* triangle waves, a different period per channel */
        uint16_t period = (uint16_t)(20u + 7u * c);
        uint16_t phase = (uint16_t)(tick % period);
        int32_t tri = phase < period / 2u ? (int32_t)phase : (int32_t)(period - phase);
        v[c] = (int16_t)((tri * 4000L) / (int32_t)(period / 2u) - 2000L);
    }
    v[2] = (int16_t)(v[2] + 16384); /* 1 g on z */
    return true;
}
#endif

static void send_sample(void)
{
    int16_t v[N_CHANNELS];
    static unsigned long last_error_ms;
    if (read_imu(v)) {
        send(el_encode_sensor_i16(tx, sizeof tx, tx_seq, micros(), flags(), v, N_CHANNELS));
    } else if (millis() - last_error_ms > 1000UL) {
        last_error_ms = millis();
        send_error(EL_ERR_SENSOR, "IMU read failed");
    }
}

/* ---- Arduino entry points ----------------------------------------------- */

void setup()
{
    pinMode(SAFE_LED, OUTPUT);
    enter_safe(); /* nobody has told us to do anything yet */
    Serial.begin(BAUD);
#ifdef USE_MPU6050
    Wire.begin();
    Wire.beginTransmission(MPU_ADDR);
    Wire.write(0x6B); /* PWR_MGMT_1: wake up */
    Wire.write(0);
    Wire.endTransmission(true);
#endif
    el_decoder_init(&rx, rx_buf, sizeof rx_buf);
#ifdef EDGE_LINK_KEY
    {
        static const uint8_t key[EL_KEY_LEN] = EDGE_LINK_KEY;
        count_boot();
        el_auth_init(&auth, key, EL_LINK_DEVICE, new_nonce);
        el_decoder_set_auth(&rx, &auth);
    }
#endif
    memset(&hello, 0, sizeof hello);
    hello.fw_major = FW_MAJOR;
    hello.fw_minor = FW_MINOR;
    hello.fw_patch = FW_PATCH;
    hello.channel_count = N_CHANNELS;
    hello.sample_type = EL_INT16;
    hello.sample_rate_millihz = 1000000UL / SAMPLE_PERIOD_MS;
    hello.schema_hash = el_schema_hash(EL_INT16, NAMES, sizeof NAMES - 1u);
    hello.safe_timeout_ms = SAFE_TIMEOUT_MS;
    hello.names = NAMES;
    hello.names_len = sizeof NAMES - 1u;

    Serial.write((uint8_t)0); /* a lone delimiter: the host drops whatever it had half-read */
    send_hello();
    last_sample_ms = millis();
}

void loop()
{
    el_frame f;
    unsigned long now;
    while (Serial.available() > 0) {
        if (el_decoder_push(&rx, (uint8_t)Serial.read(), &f)) {
            on_host_frame(&f);
        }
    }
    now = millis();
    if (host_present && now - last_host_ms > SAFE_TIMEOUT_MS) {
        host_present = false; /* the host went quiet: our own safe state, HELLO when it is back */
        enter_safe();
#ifdef EDGE_LINK_KEY
        el_auth_end(&auth); /* frames held back from this session must never count later */
#endif
    }
    if (now - last_sample_ms >= SAMPLE_PERIOD_MS) {
        last_sample_ms = (now - last_sample_ms >= 2u * SAMPLE_PERIOD_MS) ? now : last_sample_ms + SAMPLE_PERIOD_MS;
        send_sample();
    } else if (now - last_tx_ms >= HEARTBEAT_MS) {
        send(el_encode_heartbeat(tx, sizeof tx, tx_seq, micros(), flags()));
    }
}
