"""Link signing: every frame carries a tag made with a 32-byte key both ends share (PROTOCOL.md section 13).

A signed frame has the ``SIGNED`` flag and a 15-byte trailer before its CRC::

    header | payload | link_id u8 | ts u48 | tag 8 bytes | crc16

* ``link_id`` says which side signed it (:data:`LINK_DEVICE` or :data:`LINK_HOST`),
  so a frame reflected back to its sender is refused;
* ``ts`` counts the sender's signed frames within a session: a receiver takes
  only a ``ts`` above the last one it accepted, so a recorded frame cannot be
  played again (and a sender whose counter stands still is refused at once,
  not after a while: pymavlink #961);
* ``tag`` is the first 8 bytes of HMAC-SHA256(key, session || header ||
  payload || link_id || ts).

The *session* is 16 bytes, ``host_nonce || device_nonce``, agreed in one
round trip of SESSION frames: the host names a fresh random nonce, the device
answers with a nonce of its own that it never used before (a boot counter, or
random bytes). Every other frame is bound to the session through its tag, so
no frame recorded in an earlier session - before a reboot of either side, a
restart of the host, a re-HELLO, a safe timeout - verifies in the current
one, and neither side needs to store anything across reboots but the device's
nonce counter. A device without a session signs with the all-zero session:
those frames prove who sent them, not when, and a host only takes them as the
sign that the device lost its session (counted ``unbound``).

This module holds the keys, the session state and the tags; the layout
checks and the counters are :mod:`.protocol`'s and :mod:`.stream`'s. It
imports neither (they import it).  The C twin is ``c/edge_link.c``
(``el_auth``), held to the same bytes by the shared test vectors.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from typing import Callable, Optional

KEY_LEN = 32  #: bytes of a link key
NONCE_LEN = 8  #: bytes of each side's session nonce
SESSION_LEN = 2 * NONCE_LEN  #: host nonce || device nonce
TAG_LEN = 8  #: the truncated HMAC-SHA256
TS = struct.Struct("<Q")  #: the 48-bit counter is the low 6 bytes of this
TS_LEN = 6
AUTH_LEN = 1 + TS_LEN + TAG_LEN  #: 15: the trailer of a signed frame (odd, so no unsigned layout fits it)
TS_MAX = (1 << 48) - 1
ZERO_NONCE = bytes(NONCE_LEN)
ZERO_SESSION = bytes(SESSION_LEN)  #: "no session": frames bound to it are never acted on


class Side(enum.IntEnum):
    """Who signs a frame: the trailer's ``link_id``."""

    DEVICE = 0  #: device -> host
    HOST = 1  #: host -> device

    @property
    def peer(self) -> "Side":
        return Side.HOST if self is Side.DEVICE else Side.DEVICE


def _tagger(key: bytes) -> Callable[[bytes, bytes], bytes]:
    """The 8-byte tag of ``signed`` (header, payload, link_id, ts) in ``session``, for one key.

    The key's HMAC pads are hashed once and the state copied per frame.
    """
    keyed = hmac.new(key, digestmod=hashlib.sha256)

    def tag(session: bytes, signed: bytes) -> bytes:
        h = keyed.copy()
        h.update(session)
        h.update(signed)
        return h.digest()[:TAG_LEN]
    return tag


class LinkAuth:
    """One end's signing state: the key, which side it is, the session, and both counters.

    The decoder calls :meth:`check` for every frame that passed its CRC, and
    :meth:`accepted` once it is delivered; the encoder calls :meth:`sign`.
    Session changes happen inside :meth:`check` (a SESSION frame is a session
    change), in the order frames arrive, so a HELLO that follows the device's
    SESSION in the same read is already checked in the new session.

    ``new_nonce`` (device side) gives the device's nonce for each new session:
    it must never repeat for a key (a counter kept in EEPROM, or random bytes).
    """

    def __init__(self, key: bytes, side: Side, new_nonce: Optional[Callable[[], bytes]] = None):
        if len(key) != KEY_LEN:
            raise ValueError(f"a link key is {KEY_LEN} bytes, not {len(key)}")
        self.key = bytes(key)
        self._tag = _tagger(self.key)
        self.side = Side(side)
        self._new_nonce = new_nonce or (lambda: os.urandom(NONCE_LEN))
        self.session = ZERO_SESSION
        self.tx_ts = 0  #: the ts of the last frame this side signed
        self.rx_last = 0  #: the highest ts accepted from the peer in this session
        self._rx_ts = 0  # the ts of the frame being checked (kept for accepted())
        self.sessions = 0  #: sessions begun

    # --- state ---------------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        """Both nonces known: frames of this session can be acted on."""
        return self.session[:NONCE_LEN] != ZERO_NONCE and self.session[NONCE_LEN:] != ZERO_NONCE

    @property
    def host_nonce(self) -> bytes:
        return self.session[:NONCE_LEN]

    def offer(self) -> bytes:
        """Host side: start a new session with a fresh random nonce; the SESSION frame to send carries it."""
        assert self.side is Side.HOST
        nonce = os.urandom(NONCE_LEN)
        while nonce == ZERO_NONCE:  # pragma: no cover - 2**-64
            nonce = os.urandom(NONCE_LEN)
        self._begin(nonce + ZERO_NONCE, rx_last=0)
        return nonce

    def end(self) -> None:
        """Forget the session (a device whose host went silent): frames of it are refused from now on."""
        self._begin(ZERO_SESSION, rx_last=0)

    def _begin(self, session: bytes, rx_last: int, reset_tx: bool = True) -> None:
        self.session = session
        self.rx_last = rx_last
        if reset_tx:
            self.tx_ts = 0
        self.sessions += self.established  # counted once both nonces are known

    # --- signing -------------------------------------------------------------------------------

    def sign(self, body: bytes, binding: Optional[bytes] = None) -> bytes:
        """``body`` (header with SIGNED set, payload) plus the trailer; ``binding`` for a SESSION frame."""
        if self.tx_ts >= TS_MAX:
            raise ValueError("the link's signing counter is exhausted: start a new session")
        self.tx_ts += 1
        signed = body + bytes([self.side]) + TS.pack(self.tx_ts)[:TS_LEN]
        return signed + self._tag(self.session if binding is None else binding, signed)

    # --- checking ------------------------------------------------------------------------------

    def check(self, signed: bytes, tag: bytes, session_payload: Optional[bytes]) -> Optional[str]:
        """Check one signed frame; None if it may go on, else the name of the counter it goes in.

        ``signed`` is header, payload, link_id and ts; ``session_payload`` the
        16 payload bytes of a SESSION frame (None for other types).
        """
        if signed[-1 - TS_LEN] != self.side.peer:
            return "bad_signature"  # not signed by the other side: reflected, or a third party
        ts = int.from_bytes(signed[-TS_LEN:], "little")
        if session_payload is not None:
            if not hmac.compare_digest(self._tag(session_payload, signed), tag):
                return "bad_signature"
            return self._session(session_payload, ts)
        if self.established and hmac.compare_digest(self._tag(self.session, signed), tag):
            if ts <= self.rx_last:
                return "replayed"
            self._rx_ts = ts
            return None
        if hmac.compare_digest(self._tag(ZERO_SESSION, signed), tag):
            return "unbound"
        return "bad_signature"

    def accepted(self) -> None:
        """The frame last passed by :meth:`check` was delivered: its ts is the new floor."""
        self.rx_last = max(self.rx_last, self._rx_ts)

    def _session(self, payload: bytes, ts: int) -> Optional[str]:
        host, device = payload[:NONCE_LEN], payload[NONCE_LEN:]
        if host == ZERO_NONCE:
            return "bad_value"
        if self.side is Side.DEVICE:  # the host offers a session
            if device != ZERO_NONCE:
                return "bad_value"
            if host == self.host_nonce:
                return "replayed"  # the offer of the session we are in (or were in last)
            nonce = bytes(self._new_nonce())
            if len(nonce) != NONCE_LEN or nonce == ZERO_NONCE:
                raise ValueError("a device nonce is 8 bytes, not all zero")
            self._begin(host + nonce, rx_last=ts)
            return None
        # the host: the device answers our offer
        if device == ZERO_NONCE:
            return "bad_value"
        if host != self.host_nonce or self.established:
            return "replayed"  # an answer to an earlier offer, or a second answer to this one
        self._begin(payload, rx_last=ts, reset_tx=False)
        return None
