/*
 * harness.cpp - runs an Arduino sketch against a scripted host, on a simulated clock.
 *
 *   harness SCRIPT UNTIL_MS
 *
 * SCRIPT has lines "<ms> <hex>": bytes the host sends at that simulated
 * millisecond. The clock advances 1 ms per loop() call. Every Serial write
 * is printed as "<ms> TX <hex>" and every LED change as "<ms> LED <0|1>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "Arduino.h"
#include "EEPROM.h"

void setup();
void loop();

HostSerial Serial;
HostEEPROM EEPROM;

static uint8_t eeprom[1024];
static int eeprom_loaded;

static void eeprom_load(void)
{
    const char *path = getenv("HARNESS_EEPROM");
    FILE *fp = path ? fopen(path, "rb") : NULL;
    memset(eeprom, 0xFF, sizeof eeprom);
    if (fp) {
        if (fread(eeprom, 1, sizeof eeprom, fp) != sizeof eeprom) {
            memset(eeprom, 0xFF, sizeof eeprom);
        }
        fclose(fp);
    }
    eeprom_loaded = 1;
}

uint8_t HostEEPROM::read(int address)
{
    if (!eeprom_loaded) {
        eeprom_load();
    }
    return eeprom[address & 1023];
}

void HostEEPROM::update(int address, uint8_t value)
{
    const char *path = getenv("HARNESS_EEPROM");
    FILE *fp;
    if (!eeprom_loaded) {
        eeprom_load();
    }
    eeprom[address & 1023] = value;
    if (path && (fp = fopen(path, "wb")) != NULL) {
        fwrite(eeprom, 1, sizeof eeprom, fp);
        fclose(fp);
    }
}

static unsigned long now_ms;
static unsigned char inbox[1 << 16];
static size_t in_head, in_tail;
static int led = -1;

struct Event {
    unsigned long ms;
    unsigned char bytes[600];
    size_t len;
};
static Event events[4096];
static size_t n_events;

unsigned long millis(void) { return now_ms; }
unsigned long micros(void) { return now_ms * 1000UL; }
void pinMode(uint8_t, uint8_t) {}

void digitalWrite(uint8_t pin, uint8_t value)
{
    if (pin == LED_BUILTIN && value != led) {
        led = value;
        printf("%lu LED %d\n", now_ms, value);
    }
}

void HostSerial::begin(unsigned long) {}

size_t HostSerial::write(uint8_t byte) { return write(&byte, 1); }

size_t HostSerial::write(const uint8_t *data, size_t len)
{
    printf("%lu TX ", now_ms);
    for (size_t i = 0; i < len; i++) {
        printf("%02x", data[i]);
    }
    printf("\n");
    return len;
}

int HostSerial::available(void) { return (int)(in_tail - in_head); }

int HostSerial::read(void) { return in_head < in_tail ? inbox[in_head++] : -1; }

static void load(const char *path)
{
    FILE *fp = fopen(path, "r");
    char hex[1300];
    unsigned long ms;
    if (!fp) {
        perror(path);
        exit(2);
    }
    while (n_events < 4096 && fscanf(fp, "%lu %1299s", &ms, hex) == 2) {
        Event &e = events[n_events++];
        e.ms = ms;
        e.len = 0;
        for (size_t i = 0; hex[i] && hex[i + 1] && e.len < sizeof e.bytes; i += 2) {
            unsigned v;
            sscanf(hex + i, "%2x", &v);
            e.bytes[e.len++] = (unsigned char)v;
        }
    }
    fclose(fp);
}

int main(int argc, char **argv)
{
    size_t next = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: harness SCRIPT UNTIL_MS\n");
        return 2;
    }
    load(argv[1]);
    unsigned long until = strtoul(argv[2], NULL, 10);
    setup();
    for (now_ms = 0; now_ms <= until; now_ms++) {
        while (next < n_events && events[next].ms <= now_ms) {
            Event &e = events[next++];
            if (in_tail + e.len > sizeof inbox) {
                fprintf(stderr, "harness: inbox full\n");
                return 2;
            }
            memcpy(inbox + in_tail, e.bytes, e.len);
            in_tail += e.len;
        }
        loop();
    }
    return 0;
}
