"""Line faults for the virtual device: bit flips, lost bytes and bursts of noise.

Applied to the device-to-host byte stream, one written chunk (one frame) at
a time, from a seeded RNG so a failing run can be replayed exactly.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Dict


@dataclass
class FaultCounts:
    bytes_corrupted: int = 0  #: bytes with one bit flipped
    bytes_dropped: int = 0
    garbage_bursts: int = 0
    garbage_bytes: int = 0

    def as_dict(self) -> Dict[str, int]:
        return asdict(self)


class FaultInjector:
    """Damages bytes on their way to the host.

    ``corrupt``: per byte, the probability that one random bit flips.
    ``drop``: per byte, the probability that it is lost.
    ``garbage``: per chunk, the probability that 1..32 random bytes (0x00
    included, as line noise would) go out before it.
    """

    def __init__(self, rng: random.Random, corrupt: float = 0.0, drop: float = 0.0, garbage: float = 0.0) -> None:
        for name, rate in (("corrupt", corrupt), ("drop", drop), ("garbage", garbage)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"--{name} is a probability between 0 and 1, not {rate}")
        self._rng = rng
        self._corrupt, self._drop, self._garbage = corrupt, drop, garbage
        self.counts = FaultCounts()

    def apply(self, data: bytes) -> bytes:
        rng, c = self._rng, self.counts
        out = bytearray()
        if self._garbage and rng.random() < self._garbage:
            burst = rng.randbytes(rng.randint(1, 32))
            c.garbage_bursts += 1
            c.garbage_bytes += len(burst)
            out += burst
        if not (self._drop or self._corrupt):
            return bytes(out) + data
        for byte in data:
            if self._drop and rng.random() < self._drop:
                c.bytes_dropped += 1
                continue
            if self._corrupt and rng.random() < self._corrupt:
                byte ^= 1 << rng.randrange(8)
                c.bytes_corrupted += 1
            out.append(byte)
        return bytes(out)
