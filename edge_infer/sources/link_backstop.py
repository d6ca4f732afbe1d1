"""The serial link's side of the backstop (:mod:`edge_infer.deadline.backstop`): the next ACTION, ready to go.

The backstop writes a frame the link encoded in advance, so that frame must
carry the link's *next* numbers: the ``seq`` the device counts gaps in and,
on a signed link, the signing counter the device's replay floor only lets
grow (PROTOCOL.md sections 6 and 13). So:

* the fallback is encoded with the encoder's next numbers, which are then
  put back: on time, the model's ACTION takes them, and the device sees no
  gap;
* before the link encodes any other frame, it takes the fallback off the
  backstop (:meth:`LinkBackstop.off`). If the backstop wrote it meanwhile,
  the encoder moves past its numbers; if not, the other frame goes out and
  the fallback is encoded again with the numbers after it
  (:meth:`LinkBackstop.rearm`).

All of it runs under the link's transmit lock; the backstop's own thread
only ever writes the bytes it holds.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

from firmware_bridge.auth import LinkAuth
from firmware_bridge.protocol import ActionSource, FrameEncoder


class ArmedAction(NamedTuple):
    """The fallback ACTION the backstop holds: for frame ``tag`` (the runtime's seq), at ``fire_at_ns``."""

    tag: int
    fire_at_ns: int
    action: int
    reason: int
    answers: int  # the device's seq of that frame
    name: str


class Fired(NamedTuple):
    """What the backstop wrote: the fallback for frame ``tag``, finished writing at ``sent_ns``."""

    tag: int
    sent_ns: int
    complete: bool  # False: the write failed or was cut short (the port is gone or full)


class LinkBackstop:
    """One native backstop for one link: arms its next ACTION, and keeps the link's numbering whole."""

    def __init__(self, native: Any, encoder: FrameEncoder, auth: Optional[LinkAuth]):
        self.native = native
        self._encoder = encoder
        self._auth = auth
        self._armed: Optional[ArmedAction] = None
        self._numbers_after: Tuple[int, int] = (0, 0)  # the encoder's numbers once the armed frame is out
        self._wire_len = 0

    @property
    def armed(self) -> Optional[ArmedAction]:
        return self._armed

    def arm(self, armed: ArmedAction, delimiter: bool) -> None:
        """Hold ``armed`` (the slot must be off); ``delimiter``: the link owes the device a 0x00 first."""
        self._armed = armed
        self._load(delimiter)

    def off(self) -> Optional[Fired]:
        """Take the armed fallback off the backstop before another frame is encoded; what it wrote, if it did."""
        fired = self.native.disarm()
        if fired is None:
            return None
        tag, sent_ns, written, _errno = fired
        self._encoder.next_seq, tx_ts = self._numbers_after  # the device has seen the fallback's numbers
        if self._auth is not None:
            self._auth.tx_ts = tx_ts
        self._armed = None
        return Fired(tag, sent_ns, written > 0 and written == self._wire_len)

    def rearm(self, delimiter: bool) -> None:
        """After another frame went out: the armed fallback again, with the numbers after that frame."""
        if self._armed is not None:
            self._load(delimiter)

    def forget(self, tag: int) -> None:
        """Frame ``tag`` is answered now by the caller: the backstop holds nothing for it any more."""
        if self._armed is not None and self._armed.tag == tag:
            self._armed = None

    def set_fd(self, fd: int) -> None:
        """A new connection: write there (-1: nowhere); whatever was armed for the old one is dropped."""
        self._armed = None
        self.native.set_fd(fd)

    def close(self) -> None:
        self._armed = None
        self.native.close()

    def _load(self, delimiter: bool) -> None:
        armed, encoder, auth = self._armed, self._encoder, self._auth
        assert armed is not None
        numbers = (encoder.next_seq, auth.tx_ts if auth is not None else 0)
        wire = encoder.action(armed.action, source=ActionSource.FALLBACK, reason=armed.reason,
                              answers_seq=armed.answers, name=armed.name)
        self._numbers_after = (encoder.next_seq, auth.tx_ts if auth is not None else 0)
        encoder.next_seq = numbers[0]
        if auth is not None:
            auth.tx_ts = numbers[1]
        if delimiter:
            wire = b"\x00" + wire
        self._wire_len = len(wire)
        self.native.arm(armed.tag, armed.fire_at_ns, wire)
