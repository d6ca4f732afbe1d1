"""Files, directories and globs on the command line, to the logs ``eval`` reads, each with a stable name.

A log's name is what its decision file and golden file are named after,
so it must not depend on which other logs were given with it: a log found
in a directory is named by its path inside that directory
(``unit7/day1.csv``), a log given as a file or by a glob by its file name.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from ...errors import EdgeInferError
from ...io import LOG_CHUNK_READERS


@dataclass(frozen=True)
class LogPath:
    path: str
    name: str


def expand(arguments: Sequence[str]) -> List[LogPath]:
    """Every log the arguments name, in argument order (a directory's logs sorted), each once."""
    logs: List[LogPath] = []
    for argument in arguments:
        if any(c in argument for c in "*?["):
            matches = sorted(glob.glob(argument, recursive=True))
            found = [LogPath(m, os.path.basename(m)) for m in matches if _is_log(m)]
            if not found:
                raise EdgeInferError(f"{argument}: matches no .csv or .mcap log")
            logs += found
        elif os.path.isdir(argument):
            found = [LogPath(str(p), p.relative_to(argument).as_posix())
                     for p in sorted(Path(argument).rglob("*")) if p.is_file() and _is_log(str(p))]
            if not found:
                raise EdgeInferError(f"directory {argument} holds no .csv or .mcap log")
            logs += found
        elif os.path.exists(argument):
            logs.append(LogPath(argument, os.path.basename(argument)))
        else:
            raise EdgeInferError(f"log {argument}: no such file or directory")
    return _unique(logs)


def _is_log(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in LOG_CHUNK_READERS


def _unique(logs: List[LogPath]) -> List[LogPath]:
    seen: Dict[str, LogPath] = {}
    by_name: Dict[str, str] = {}
    for log in logs:
        key = os.path.realpath(log.path)
        if key in seen:
            continue
        if log.name in by_name:
            raise EdgeInferError(f"two logs would share the name {log.name!r} ({by_name[log.name]} and {log.path}); "
                                 "give their common parent directory instead, so their names keep their folders")
        seen[key] = log
        by_name[log.name] = log.path
    return list(seen.values())
