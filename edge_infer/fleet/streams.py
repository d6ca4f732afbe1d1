"""A board with several streams (docs/streams.md) as the fleet sees it: one client, one spool, streams in payloads.

One runtime is one board: one MQTT client id, one spool, one ``run``/``n`` sequence, one ``status`` and last
will. Which stream a message is about is said in its payload, not in the topic: a decision record carries
``stream`` (it always did), an event about one stream carries ``stream``, the summary carries ``streams`` (one
summary per stream, with its ``state``). So the topic tree, the broker ACL, the subscriptions of ``fleet watch``
and of Telegraf stay what they are for one stream, and a stream's name, by default its source
(``serial:/dev/serial/by-id/...``, a log's path, with ``/`` in it), needs no escaping into a topic level.

:class:`BoardStreams` is what the MQTT sink needs to know of a :class:`~edge_infer.runtime.StreamsRuntime`:
each stream's input checks (what a threshold command changes, for one stream or for all) and a way to read
every stream's state (``running``, ``no data``, ``ended``, ``failed: ...``) from the sink's worker thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from .control import Command, Refused

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class BoardStreams:
    """The streams of one runtime: ``guards`` by name (in the runtime's order), ``states`` (name -> state, safe to
    call from another thread) and ``about`` (name, source, model and budget of each, for the ``start`` event)."""

    guards: Dict[str, Any]
    states: Callable[[], Dict[str, str]]
    about: List[Dict[str, Any]]

    def targets(self, command: Command) -> Dict[str, Any]:
        """The guards a threshold command changes: its ``stream``'s, or every stream's; :class:`Refused` for a
        stream this board does not run, or a threshold one of them does not have (all or nothing)."""
        if command.stream is None:
            guards = self.guards
        elif command.stream in self.guards:
            guards = {command.stream: self.guards[command.stream]}
        else:
            raise Refused(f"no stream {command.stream!r} on this board (streams: {', '.join(self.guards)})")
        for name, guard in guards.items():
            missing = [key for key in command.set if guard.thresholds().get(key) is None]
            if missing:
                raise Refused(f"stream {name!r} has no {missing[0]} (its model has no such check); nothing changed")
        return guards

    def recording_stream(self, command: Command) -> str:
        """The one stream a recording command is for: a recording is one source's frames."""
        if command.stream is None:
            raise Refused(f"this board runs {len(self.guards)} streams: a recording is of one, name it (stream)")
        if command.stream not in self.guards:
            raise Refused(f"no stream {command.stream!r} on this board (streams: {', '.join(self.guards)})")
        return command.stream


class StateWatch:
    """Which streams changed state since the last look (states only move forward: no data, running, ended or
    failed; a look every 0.1 s by the sink's worker costs one dict per stream)."""

    def __init__(self, states: Dict[str, str]):
        self.last = dict(states)

    def changes(self, states: Dict[str, str]) -> Optional[Dict[str, str]]:
        changed = {name: state for name, state in states.items() if self.last.get(name) != state}
        if not changed:
            return None
        self.last = dict(states)
        return changed


def file_safe(name: str) -> str:
    """A stream's name as part of a file name (``serial:/dev/ttyACM0`` -> ``serial_dev_ttyACM0``)."""
    return _UNSAFE.sub("_", name).strip("_")[:64] or "stream"


__all__ = ["BoardStreams", "StateWatch", "file_safe"]
