"""How edge-infer writes files: nothing it wrote before, or that a user made, is lost (docs/security.md).

Three kinds of output, three rules, one place for each:

* **Records** (decision logs, recordings) are only appended to, or continued
  in a new part: a restart after a crash must not erase the record of the
  crash. (:mod:`edge_infer.sinks.jsonl`, :mod:`edge_infer.sinks.recorder`.)
* **Made once** (converted logs, keys; eval outputs and golden files too):
  :func:`create_new` refuses a path that exists, in one line, and publishes
  the file only when complete, so a failure leaves neither a half file nor a
  changed target.
* **Views regenerated from the records** (the metrics textfile, the HTML
  report, the accepted-versions state, a bundle signature signed again with
  ``--replace``, a spec's calibrated tables): :func:`replace_atomically`
  writes a temporary file, fsyncs it and renames it over the old one, so a
  reader or a crash sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

from ..errors import EdgeInferError


#: link(2) errors of file systems without hard links (vfat, exfat).
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP)


def refuse_existing(path: "str | Path", what: str, hint: str = "remove it or choose another name") -> None:
    """A one-line error if ``path`` exists (even as a dangling link): ``what`` names the output."""
    if os.path.lexists(path):
        raise EdgeInferError(f"{what} {path} already exists; edge-infer never overwrites it ({hint})")


def create_new(path: "str | Path", write: Callable[[Path], None], what: str) -> None:
    """Make ``path``, which must not exist, by calling ``write(temporary_path)``; publish it only if that
    succeeds. The publication is ``link(2)``, which fails if ``path`` appeared meanwhile: never overwritten."""
    path = Path(path)
    refuse_existing(path, what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=str(path.parent))
    except FileNotFoundError:
        raise EdgeInferError(f"cannot write {what} {path}: its folder does not exist") from None
    except OSError as exc:
        raise EdgeInferError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise EdgeInferError(f"{what} {path} appeared while it was being written; it was left as it is") \
                from None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise EdgeInferError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
            # FAT (a USB stick, an SD card's boot partition) has no hard links: check again, then rename
            # (a file that appears in between is the one race left there)
            refuse_existing(path, what)
            try:
                os.rename(tmp, path)
            except OSError as again:
                raise EdgeInferError(f"cannot write {what} {path}: {again.strerror or again}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # published; a folder that cannot be synced does not undo that
        sync_folder(path)


def sync_folder(path: Path) -> None:
    """fsync ``path``'s folder, so that the new name survives a power cut too (not only the new bytes)."""
    fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: "str | Path", data: bytes, what: str, mode: Optional[int] = None) -> None:
    """Replace ``path`` with ``data``: readers and crashes see the old file or the new one, never half.

    ``mode``: the new file's permissions (the temporary file is made 0600 whatever the umask).
    """
    path = Path(path)
    tmp: Optional[str] = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        sync_folder(path)
    except OSError as exc:
        raise EdgeInferError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
