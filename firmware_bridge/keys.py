"""Link key files: reading them safely, making new ones, and handing one to a device's firmware.

A link key is 32 bytes both ends of a signed link share (PROTOCOL.md section
13, docs/link-security.md). On the host it lives in a file the service's
user alone can read; the file is named on the command line (``--link-key
FILE``) or in the service config (``[source].link_key``), never the key
itself, which ``ps`` and shell history would show.

    python -m firmware_bridge.keys keygen /etc/edge-infer/link.key   # new random key, mode 0600
    python -m firmware_bridge.keys c-header /etc/edge-infer/link.key  # #define EDGE_LINK_KEY {...} for firmware
    python -m firmware_bridge.keys check /etc/edge-infer/link.key     # size, mode, not all zero
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from edge_infer.errors import SourceError

from .auth import KEY_LEN


class LinkKeyError(SourceError):
    """A link key file that cannot be used (the message says why and what to do, on one line)."""



def load_key(path: Union[str, Path]) -> bytes:
    """Read a link key file: 32 raw bytes, or 64 hex digits (and a newline).

    Refused, with one line that says what to do: a file others may read or
    write (group or world permission bits), a file of any other size, and the
    all-zero key (a placeholder). The key is never taken from the command
    line, where ``ps`` and shell history would show it.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang the start: refused below
    except OSError as exc:
        raise LinkKeyError(f"link key {path}: cannot read it: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise LinkKeyError(f"link key {path} is not a regular file")
        if mode & 0o077:
            raise LinkKeyError(f"link key {path} is accessible to others (mode {stat.S_IMODE(mode):04o}); "
                            f"chmod 600 {path} (and keep it owned by the service's user)")
        data = os.read(fd, 4 * KEY_LEN + 2)
    finally:
        os.close(fd)
    key = _parse_key(data)
    if key is None:
        raise LinkKeyError(f"link key {path} must hold {KEY_LEN} raw bytes or {2 * KEY_LEN} hex digits, "
                        f"not {len(data)} bytes; make one with: python -m firmware_bridge.keys keygen {path}")
    if key == bytes(KEY_LEN):
        raise LinkKeyError(f"link key {path} is all zeros (a placeholder); make a real one with "
                        f"python -m firmware_bridge.keys keygen PATH")
    return key


def _parse_key(data: bytes) -> Optional[bytes]:
    if len(data) == KEY_LEN:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_LEN:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
    return None


def write_new_key(path: Union[str, Path]) -> None:
    """Write a fresh random key as 64 hex digits, mode 0600; refuses to replace an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(os.urandom(KEY_LEN).hex() + "\n")


def c_initializer(key: bytes) -> str:
    """The key as a C array initializer, for a device's firmware (``#define EDGE_LINK_KEY {...}``)."""
    rows = [", ".join(f"0x{b:02x}" for b in key[i:i + 8]) for i in range(0, KEY_LEN, 8)]
    return "{ \\\n    " + ", \\\n    ".join(rows) + " \\\n}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware_bridge.keys",
                                     description="Link keys for signed edge-link links (docs/link-security.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("keygen", help="write a new random key file (mode 0600, never overwrites)").add_argument("path")
    sub.add_parser("c-header", help="print a C header defining EDGE_LINK_KEY from a key file").add_argument("path")
    sub.add_parser("check", help="check a key file as edge-infer will (size, mode, not all zero)").add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            write_new_key(args.path)
            print(f"wrote a new link key to {args.path} (mode 0600)")
        elif args.command == "check":
            load_key(args.path)
            print(f"link key {args.path} is usable")
        else:
            key = load_key(args.path)
            print("/* edge-link key: keep this file out of version control (docs/link-security.md) */")
            print(f"#define EDGE_LINK_KEY {c_initializer(key)}")
    except FileExistsError:
        print(f"auth: error: {args.path} exists; a key is never overwritten", file=sys.stderr)
        return 2
    except (OSError, LinkKeyError) as exc:
        print(f"auth: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
