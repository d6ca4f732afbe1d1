"""A pseudo-terminal that looks like a USB serial device at a fixed path, and can be unplugged.

The device side holds the pty master; the host opens the slave through a
symlink (``--link PATH``), exactly as it would open
``/dev/serial/by-id/usb-...``. Unplugging closes the master, so the host's
reads fail as they do when a cable is pulled, and removes the symlink as
udev would; plugging in again makes a new pty and points the symlink at it.
"""

from __future__ import annotations

import errno
import os
import select
import time
import tty
from pathlib import Path
from typing import Callable, Optional

from edge_infer.errors import SourceError


class PtyLink:
    """The device end of a pty, published at ``path``."""

    def __init__(self, path: "str | Path") -> None:
        self.path = Path(path)
        self.master: Optional[int] = None
        self._slave: Optional[int] = None
        self.slave_name = ""
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_symlink():
                raise SourceError(f"--link {self.path} exists and is not a symlink; refusing to replace it")
        elif not self.path.parent.is_dir():
            raise SourceError(f"--link {self.path}: directory {self.path.parent} does not exist")

    @property
    def connected(self) -> bool:
        return self.master is not None

    def plug(self) -> None:
        """Create a fresh pty (raw, 8 bit) and point the symlink at its slave."""
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        # Holding the slave open ourselves keeps the master usable (no EIO) while no host has it open.
        self.master, self._slave, self.slave_name = master, slave, os.ttyname(slave)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(self.slave_name, tmp)
        os.replace(tmp, self.path)  # atomic: a stale link is replaced, never missing in between

    def unplug(self) -> None:
        """Close the pty (the host sees EOF/EIO) and remove the symlink."""
        self._remove_link()
        for fd in (self.master, self._slave):
            if fd is not None:
                os.close(fd)
        self.master = self._slave = None

    close = unplug

    def read(self) -> Optional[bytes]:
        """Whatever the host has written (b"" if nothing); None if the link is down."""
        if self.master is None:
            return None
        try:
            return os.read(self.master, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def write(self, data: bytes, wait: float, on_input: Callable[[bytes], None]) -> int:
        """Write ``data``; wait up to ``wait`` seconds for room, reading the host meanwhile.

        Returns how many bytes could not be written (the host is not reading).
        ``on_input`` gets what the host sent while we waited, so neither side
        can block the other.
        """
        view = memoryview(data)
        deadline = None
        while view and self.master is not None:
            try:
                view = view[os.write(self.master, view):]
                continue
            except BlockingIOError:
                pass
            now = time.monotonic()
            deadline = now + wait if deadline is None else deadline
            if now >= deadline:
                break
            readable, _, _ = select.select([self.master], [self.master], [], deadline - now)
            if readable:
                chunk = self.read()
                if chunk:
                    on_input(chunk)
        return len(view)

    def _remove_link(self) -> None:
        try:
            if self.path.is_symlink() and os.readlink(self.path) == self.slave_name:
                self.path.unlink()
        except OSError:
            pass
