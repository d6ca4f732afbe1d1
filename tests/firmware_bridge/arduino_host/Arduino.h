/*
 * Arduino.h - just enough of the Arduino API to run a sketch on the build machine.
 *
 * Used by the firmware_bridge tests to compile the example sketch with the
 * host's g++ and drive it with a simulated clock (see harness.cpp). It is
 * not an emulator: no timing, no registers, only the calls the sketch makes.
 */
#ifndef HOST_ARDUINO_H
#define HOST_ARDUINO_H

#include <stddef.h>
#include <stdint.h>

#define HIGH 1
#define LOW 0
#define OUTPUT 1
#define LED_BUILTIN 13

unsigned long millis(void);
unsigned long micros(void);
void pinMode(uint8_t pin, uint8_t mode);
void digitalWrite(uint8_t pin, uint8_t value);

class HostSerial {
public:
    void begin(unsigned long baud);
    size_t write(uint8_t byte);
    size_t write(const uint8_t *data, size_t len);
    int available(void);
    int read(void);
};

extern HostSerial Serial;

#endif
