"""The ``edge-infer`` command: thin sub-commands over the library.

Every sub-command lives in its own module with ``add_parser(subparsers)``
and ``main(args) -> int``. Errors a user can cause are
:class:`~edge_infer.errors.EdgeInferError` and end as one line on stderr with
a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, NoReturn, Optional

from .._version import __version__
from ..errors import EdgeInferError
from ..service.config import apply_config
from . import bench, check_config, convert, fleet, inspect_model, keygen, record, replay, run, sign
from . import eval as eval_command

COMMANDS = (run, replay, eval_command, inspect_model, bench, check_config, record, convert, keygen, sign, fleet)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage mistakes reported like every other error: one line, exit code 2.

    (argparse's own style prints the whole usage block first; sub-parsers are made of this class too.)
    """

    def error(self, message: str) -> "NoReturn":
        self.exit(2, f"edge-infer: error: {self.prog.split(' ', 1)[-1] if ' ' in self.prog else 'usage'}: "
                     f"{message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge-infer", description=(
        "Run a quantized TFLite model on sensor frames within a time budget, "
        "falling back to a safe action when it cannot answer in time."))
    parser.add_argument("--version", action="version", version=f"edge-infer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args = apply_config(parser, args, argv)  # --config: the file's values become defaults, flags still win
        return int(args.handler(args) or 0)
    except EdgeInferError as exc:
        print(f"edge-infer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-infer ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
