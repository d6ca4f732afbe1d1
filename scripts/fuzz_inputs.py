#!/usr/bin/env python3
"""Fuzz what edge-infer reads from its user: recorded CSV logs, model specs and .tflite models.

    python scripts/fuzz_inputs.py [--targets csv,spec,model] [--runs N] [--engine atheris|hypothesis]

Every input is written to a file and opened the way the command line opens
it (``read_csv_log`` plain and ``--strict``; ``open_model`` on a spec beside
the bundled model; ``Engine``, then one ``infer``). Rejecting an input with an
:class:`~edge_infer.errors.EdgeInferError` (one line, exit 2 at the command
line) is correct; any other exception is a bug, and so is a crash of the
process. A model that loads but whose ``infer`` raises is what the scheduler
turns into ``model_error`` fallbacks, so that exception is expected too.

Engines:

* ``atheris`` (``pip install 'edge-infer[fuzz]'``): coverage-guided libFuzzer
  over the instrumented edge_infer code, one child process per target,
  started from a seed corpus of valid files (the bundled log, spec and
  model, a corrupted log, a builder model). A failing input is saved as
  ``crash-*`` in the working directory by libFuzzer and the exit code is non-zero.
* ``hypothesis`` (the default without atheris): random mutations of the same
  seeds (bytes replaced, inserted, deleted, truncated) and random bytes.

Prints, per target, how many inputs ran, how many were rejected with an
EdgeInferError and how many raised something else (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = ("csv", "spec", "model")
MEMORY_LIMIT = 8 << 30  # bytes of address space for an atheris child
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def seeds(target: str) -> List[bytes]:
    """Valid inputs to start from: mutations of these reach far deeper than random bytes."""
    from edge_infer.model.loader import bundled_log, bundled_spec
    from edge_infer.testing.tflite_builder import dense_model

    if target == "csv":
        lines = bundled_log().read_bytes().splitlines(keepends=True)
        return [b"".join(lines[:60]), b"t,a,b\n0.0,1,2\n0.1,nan,inf\n0.2,-1e39,3\n", b"t,a,label\n0,1,x\n"]
    if target == "spec":
        text = bundled_spec().read_bytes()
        return [text, text.split(b"\n# Input checks")[0]]
    return [(bundled_spec().parent / "basic_motions.tflite").read_bytes(), dense_model(8, 2, 3, seed=1),
            dense_model(4, 1, 2, dtype="float32", seed=2)]


def target_function(target: str, workdir: Path) -> Callable[[bytes], bool]:
    """A function that opens one input and returns True if it was accepted, False if rejected as expected.

    Anything else it raises is a finding. Spec inputs name a model beside them (the bundled one), so a
    spec that parses is also checked against its model.
    """
    from edge_infer.errors import EdgeInferError

    if target == "csv":
        from edge_infer.io.csv_log import read_csv_log
        path = workdir / "fuzz.csv"

        def open_input(data: bytes) -> bool:
            path.write_bytes(data)
            try:
                read_csv_log(path, strict=True)
                read_csv_log(path)
                return True
            except EdgeInferError:
                return False
        return open_input

    if target == "spec":
        from edge_infer.model.loader import bundled_spec, open_model
        path = workdir / "fuzz.toml"
        model = workdir / "basic_motions.tflite"
        model.write_bytes((bundled_spec().parent / "basic_motions.tflite").read_bytes())

        def open_input(data: bytes) -> bool:
            path.write_bytes(data)
            try:
                open_model(str(path))
                return True
            except EdgeInferError:
                return False
        return open_input

    import numpy as np

    from edge_infer.model.engine import Engine
    path = workdir / "fuzz.tflite"

    def open_input(data: bytes) -> bool:
        path.write_bytes(data)
        try:
            engine = Engine(path)
        except EdgeInferError:
            return False
        try:
            engine.infer(np.zeros((engine.window, engine.channels), dtype=np.float32))
        except Exception:  # what the scheduler does with it: the window falls back with reason model_error
            return False
        return True
    return open_input


# --- hypothesis ------------------------------------------------------------------------------------

def fuzz_hypothesis(target: str, runs: int, seed: int) -> Dict[str, int]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    counts = {"runs": 0, "accepted": 0, "rejected": 0, "unexpected": 0}
    starts = seeds(target)

    @st.composite
    def mutated(draw: Callable) -> bytes:
        data = bytearray(draw(st.sampled_from(starts)))
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, max(0, len(data) - 1)))
            how = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
            if how == "replace" and data:
                data[at] = draw(st.integers(0, 255))
            elif how == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif how == "delete":
                del data[at:at + draw(st.integers(1, 64))]
            else:
                del data[at:]
        return bytes(data)

    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        open_input = target_function(target, Path(tmp))

        @hypothesis_seed(seed)
        @settings(max_examples=runs, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(st.one_of(mutated(), st.binary(max_size=512)))
        def run(data: bytes) -> None:
            counts["runs"] += 1
            try:
                counts["accepted" if open_input(data) else "rejected"] += 1
            except Exception:
                counts["unexpected"] += 1
                raise

        try:
            run()
        except Exception as exc:  # hypothesis re-raises the (shrunk) failure: report it, keep the counts
            print(f"{target}: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
    return counts


# --- atheris ---------------------------------------------------------------------------------------

def fuzz_atheris_child(target: str, runs: int, seed: int) -> None:
    """In a child process: libFuzzer over one target (it exits the process when done)."""
    import atheris

    with atheris.instrument_imports(include=["edge_infer"]):
        import edge_infer.io.csv_log  # noqa: F401
        import edge_infer.model.engine  # noqa: F401
        import edge_infer.model.loader  # noqa: F401
        import edge_infer.model.spec  # noqa: F401
    workdir = Path(tempfile.mkdtemp(dir=SCRATCH))
    corpus = workdir / "corpus"
    corpus.mkdir()
    for i, data in enumerate(seeds(target)):
        (corpus / f"seed{i}").write_bytes(data)
    open_input = target_function(target, workdir)
    # A corrupt model may ask for a huge tensor: let that allocation fail (the loader must then say so)
    # instead of libFuzzer stopping at its malloc limit.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-seed={seed}", "-max_len=65536", "-rss_limit_mb=0",
                   "-malloc_limit_mb=0", str(corpus)], open_input)
    atheris.Fuzz()


def fuzz_atheris(target: str, runs: int, seed: int) -> Dict[str, int]:
    done = subprocess.run([sys.executable, __file__, "--child", target, "--runs", str(runs), "--seed", str(seed)],
                          capture_output=True, text=True, cwd=os.getcwd())
    ran = re.search(r"Done (\d+) runs", done.stderr)
    if done.returncode != 0 or ran is None:
        print(done.stderr[-4000:], file=sys.stderr)
        return {"runs": int(ran.group(1)) if ran else 0, "unexpected": 1, "exit_code": done.returncode}
    return {"runs": int(ran.group(1)), "unexpected": 0}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--runs", type=int, default=2000, help="inputs per target (default 2000)")
    parser.add_argument("--engine", choices=("atheris", "hypothesis"),
                        help="default: atheris if it is installed, else hypothesis")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        fuzz_atheris_child(args.child, args.runs, args.seed)
        return 0
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        print(f"fuzz_inputs: unknown target {unknown[0]!r} (known: {', '.join(TARGETS)})", file=sys.stderr)
        return 2
    fuzz = fuzz_atheris if engine == "atheris" else fuzz_hypothesis
    results = {target: fuzz(target, args.runs, args.seed) for target in targets}
    if args.json:
        print(json.dumps({"engine": engine, "results": results}))
    else:
        for target, counts in results.items():
            print(f"{target:6} {engine}: {counts['runs']} inputs, unexpected exceptions: {counts['unexpected']}"
                  + (f" (accepted {counts['accepted']}, rejected {counts['rejected']})" if "accepted" in counts else ""))
    return 1 if any(c["unexpected"] for c in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
