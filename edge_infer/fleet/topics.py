"""The topic tree and its payloads: ``edge-infer/<device-id>/{status,decisions,summary,events,control}``.

One place for the names, so the sink, ``fleet watch`` and ``fleet control`` agree; docs/fleet.md
describes each payload. Every JSON payload the board sends carries ``run`` (a random id per process
start) and ``n`` (its number within the run): a message sent twice (at least once delivery after a
crash) has the same pair, and a consumer drops repeats by it.
"""

from __future__ import annotations

import datetime
import re
from typing import Optional, Tuple

ROOT = "edge-infer"
STATUS, DECISIONS, SUMMARY, EVENTS, CONTROL = "status", "decisions", "summary", "events", "control"
#: what the board sends (its subscriptions are only CONTROL)
PUBLISHED = (STATUS, DECISIONS, SUMMARY, EVENTS)
ONLINE, OFFLINE = b"online", b"offline"
#: MQTT topic levels must not hold '/', '+' or '#'; a device id also names a spool directory and a client id.
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_device_id(text: str) -> str:
    if not _DEVICE_ID.match(text):
        raise ValueError(f"device id {text!r}: use 1 to 64 letters, digits, '_', '.' or '-' (it is a topic level)")
    return text


def topic(device_id: str, suffix: str) -> str:
    return f"{ROOT}/{device_id}/{suffix}"


def split_topic(name: str) -> Optional[Tuple[str, str]]:
    """``edge-infer/D/decisions`` -> ``("D", "decisions")``; None for anything else."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != ROOT:
        return None
    return parts[1], parts[2]


def utc_now() -> str:
    """Wall-clock time in messages (ISO 8601, UTC, ms): spooled messages arrive late and say when they were made."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = ["ROOT", "STATUS", "DECISIONS", "SUMMARY", "EVENTS", "CONTROL", "PUBLISHED", "ONLINE", "OFFLINE",
           "check_device_id", "topic", "split_topic", "utc_now"]
