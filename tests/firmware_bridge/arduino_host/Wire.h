/*
 * Wire.h - a stand-in for the Arduino I2C library with a fake MPU-6050 behind it.
 *
 * Lets the sketch's USE_MPU6050 path compile and run on the build machine:
 * reading 14 bytes from register 0x3B returns a fixed sample (accel 1000,
 * -2000, 16384; temperature 0; gyro 131, -262, 0), big-endian as the chip
 * sends it.
 */
#ifndef HOST_WIRE_H
#define HOST_WIRE_H

#include <stddef.h>
#include <stdint.h>

class TwoWire {
public:
    void begin(void) {}
    void beginTransmission(uint8_t address) { addr_ = address; reg_set_ = false; }
    size_t write(uint8_t value)
    {
        if (!reg_set_) {
            reg_ = value;
            reg_set_ = true;
        }
        return 1;
    }
    uint8_t endTransmission(bool stop = true) { (void)stop; return addr_ == 0x68 ? 0 : 2; }
    uint8_t requestFrom(int address, int count)
    {
        pos_ = (address == 0x68 && reg_ == 0x3B && count == 14) ? 0 : 14;
        return pos_ == 0 ? 14 : 0;
    }
    int read(void) { return pos_ < 14 ? sample_[pos_++] : -1; }

private:
    uint8_t addr_ = 0, reg_ = 0, pos_ = 14;
    bool reg_set_ = false;
    const uint8_t sample_[14] = {0x03, 0xE8, 0xF8, 0x30, 0x40, 0x00, 0x00, 0x00, 0x00, 0x83, 0xFE, 0xFA, 0x00, 0x00};
};

static TwoWire Wire;

#endif
