/*
 * EEPROM.h - the Arduino EEPROM API the sketch uses, as 1 KB of memory (all 0xFF, like a fresh chip's
 * EEPROM, unless HARNESS_EEPROM names a file to load it from and save it back to: a reboot keeps it).
 */
#ifndef HOST_EEPROM_H
#define HOST_EEPROM_H

#include <stdint.h>

class HostEEPROM {
public:
    uint8_t read(int address);
    void update(int address, uint8_t value);
};

extern HostEEPROM EEPROM;

#endif
