"""The serial link's side of the backstop (:mod:`edge_infer.deadline.backstop`): fallback ACTIONs, ready to go.

The backstop writes frames the link encoded in advance, one per window
waiting for its decision, in order. Each must carry the numbers it will
have on the wire: the ``seq`` the device counts gaps in and, on a signed
link, the signing counter the device's replay floor only lets grow
(PROTOCOL.md sections 6 and 13). So, with ``k`` frames queued:

* a new window's fallback is encoded with the encoder's next numbers plus
  ``k``; the encoder itself does not move (:meth:`LinkBackstop.arm`);
* the decision of the oldest window takes the encoder's next numbers, the
  ones its queued fallback holds: the link encodes it and the backstop
  writes it in the fallback's place, in one call that nothing can come
  between (:meth:`LinkBackstop.answer`); the frames behind it keep their
  numbers. If the fallback went out first, the decision is not sent (its
  numbers are given back) and the window's decision *is* that fallback;
* a frame the backstop wrote moves the encoder past its numbers
  (:meth:`LinkBackstop.collect`);
* any other frame (a heartbeat, a session offer, a decision of a window
  with nothing queued) clears the queue (:meth:`LinkBackstop.off`), goes out
  with the encoder's next numbers, and the windows still waiting are encoded
  again after it (:meth:`LinkBackstop.rearm`).

Every backstop frame starts with a 0x00 delimiter (an empty chunk, which
every receiver skips), so it never depends on how the frame before it ended.
All of this runs under the link's transmit lock; the backstop's own thread
only writes the bytes it holds.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, List, NamedTuple, Optional, Tuple

from firmware_bridge.auth import LinkAuth
from firmware_bridge.protocol import ActionSource, FrameEncoder


class ArmedAction(NamedTuple):
    """A fallback ACTION the backstop holds: for frame ``tag`` (the runtime's seq), at ``fire_at_ns``."""

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
    """One native backstop for one link: its queue of fallback ACTIONs, and the link's numbering kept whole."""

    def __init__(self, native: Any, encoder: FrameEncoder, auth: Optional[LinkAuth]):
        self.native = native
        self._encoder = encoder
        self._auth = auth
        #: What the native queue holds, in order, with each frame's length (written frames until collected).
        self._queued: Deque[Tuple[ArmedAction, int]] = deque()

    def arm(self, armed: ArmedAction) -> bool:
        """Queue ``armed`` behind the others; False if the queue is full (that window has no backstop)."""
        encoder, auth, ahead = self._encoder, self._auth, len(self._queued)
        seq, tx_ts = encoder.next_seq, auth.tx_ts if auth is not None else 0
        encoder.next_seq = (seq + ahead) & 0xFFFF
        if auth is not None:
            auth.tx_ts = tx_ts + ahead
        try:
            wire = b"\x00" + encoder.action(armed.action, source=ActionSource.FALLBACK, reason=armed.reason,
                                            answers_seq=armed.answers, name=armed.name)
        finally:
            encoder.next_seq = seq
            if auth is not None:
                auth.tx_ts = tx_ts
        if not self.native.arm(armed.tag, armed.fire_at_ns, wire):
            return False
        self._queued.append((armed, len(wire)))
        return True

    def collect(self) -> List[Fired]:
        """The fallbacks written since the last call; the encoder moves past their numbers."""
        out = []
        for tag, sent_ns, written, _errno in self.native.collect():
            length = self._queued.popleft()[1] if self._queued else -1  # written in queue order
            self._encoder.next_seq = (self._encoder.next_seq + 1) & 0xFFFF
            if self._auth is not None:
                self._auth.tx_ts += 1
            out.append(Fired(tag, sent_ns, written == length))
        return out

    def answer(self, tag: int, encode: Callable[[], bytes]) -> Optional[Tuple[int, int, int]]:
        """Write ``tag``'s decision (``encode``: with the encoder's next numbers) in its fallback's place.

        (written, errno, length of the frame); None if the fallback is not next (it went out already, or was
        never queued): then nothing was written and the numbers are given back.
        """
        if not self._queued or self._queued[0][0].tag != tag:
            return None
        encoder, auth = self._encoder, self._auth
        seq, tx_ts = encoder.next_seq, auth.tx_ts if auth is not None else 0
        wire = encode()
        result = self.native.answer(tag, wire)
        if result is None:
            encoder.next_seq = seq
            if auth is not None:
                auth.tx_ts = tx_ts
            return None
        self._queued.popleft()
        return result[0], result[1], len(wire)

    def off(self) -> List[Fired]:
        """Before another frame is encoded: nothing stays queued; returns what was written meanwhile."""
        self.native.clear()
        return self.collect()

    def rearm(self) -> None:
        """After another frame went out: every window still waiting, queued again with the numbers after it."""
        waiting = [armed for armed, _length in self._queued]
        self._queued.clear()
        for armed in waiting:
            if not self.arm(armed):
                break

    def forget(self, tag: int) -> None:
        """Frame ``tag``'s fallback is not to go out (call :meth:`off` first, :meth:`rearm` after)."""
        self._queued = deque(entry for entry in self._queued if entry[0].tag != tag)

    def drop(self) -> None:
        """Nothing more is to go out for the windows queued (the link is down, or shut down)."""
        self._queued.clear()

    def set_fd(self, fd: int) -> None:
        """A new connection: write there (-1: nowhere); nothing queued for the old one goes out."""
        self.native.set_fd(fd)
        self._queued.clear()

    def close(self) -> None:
        self._queued.clear()
        self.native.close()
