"""Read a TOML file for the spec or the service config, every failure one line naming the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Optional, Type

from ..errors import EdgeInferError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9/3.10 only
    import tomli as tomllib


def read_toml(path: Path, kind: str, error: Type[EdgeInferError], not_found_hint: str = "",
              data: Optional[bytes] = None) -> Dict[str, Any]:
    """The document at ``path``; ``kind`` ("spec", "config") names it in the ``error`` raised otherwise.

    ``data``: the file's bytes, already read (and verified: a signed bundle's spec is parsed from the bytes
    whose signature was checked, not read again).
    """
    try:
        if data is not None:
            return tomllib.loads(data.decode("utf-8"))
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise error(f"{kind} {path} not found{not_found_hint}") from None
    except IsADirectoryError:
        raise error(f"{kind} {path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise error(f"cannot read {kind} {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{kind} {path} is not valid TOML: {exc}") from None
