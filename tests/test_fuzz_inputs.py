"""Property tests: bad input is rejected with an EdgeInferError (one line at the command line) and never
raises anything else, for the CSV reader, the spec parser (with its [checks] and [ood] tables), the model
loader and the input guard. (The serial codec's properties are in tests/firmware_bridge.)

scripts/fuzz_inputs.py runs the same targets for longer, coverage-guided with atheris.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED_LOG, BUNDLED_SPEC, ROOT, run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_infer.checks.config import WINDOW_REASONS
from edge_infer.checks.guard import build_guard
from edge_infer.deadline.options import runtime_options
from edge_infer.decide.reasons import Reason
from edge_infer.errors import LogError, ModelError, SpecError
from edge_infer.frame import Frame
from edge_infer.io import read_log
from edge_infer.io.csv_log import read_csv_log
from edge_infer.model.engine import Engine
from edge_infer.model.loader import open_model
from edge_infer.model.spec import load_spec
from edge_infer.runtime import Runtime
from edge_infer.sources.log_replay import LogSource, channel_columns
from edge_infer.testing.tflite_builder import dense_model
from edge_infer.window import WindowBuffer

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --- the CSV reader ---------------------------------------------------------------------------------

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str))
garbage = st.sampled_from(["", "abc", "1.2.3", "0x1F", "--", "nan", "-inf", "1e999", "\x00", '"', '"1,2"',
                           "\u00e9", " 1 ", "1;2", "\r"])
field = st.one_of(numbers, garbage)


@st.composite
def csv_text(draw) -> str:
    lines = ["t,a,b,label"]
    for _ in range(draw(st.integers(0, 40))):
        width = draw(st.sampled_from([4, 4, 4, 4, 3, 5, 1]))
        cells = [draw(field) for _ in range(width)]
        lines.append(",".join(cells))
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["", "   ", "### junk ###", "t,a,b,label"])))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


@FAST
@given(text=csv_text())
def test_the_csv_reader_skips_and_counts_bad_rows(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("csv") / "log.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    log = read_csv_log(path)
    assert len(log.t) == len(log.values) == len(log.labels)
    assert all(math.isfinite(t) for t in log.t)
    lines = len(io.StringIO(text, newline="").readlines())  # as the reader counts: \n, \r\n and a lone \r
    assert all(2 <= line <= lines for line, _ in log.bad_rows)
    assert len(log.t) + len(log.bad_rows) <= lines - 1
    if log.bad_rows:
        with pytest.raises(LogError, match=f"line {log.bad_rows[0][0]}:"):
            read_csv_log(path, strict=True)
    else:
        assert len(read_csv_log(path, strict=True)) == len(log)


@FAST
@given(data=st.binary(max_size=2048))
def test_the_csv_reader_takes_any_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("csv") / "log.csv"
    path.write_bytes(data)
    for strict in (False, True):
        try:
            read_csv_log(path, strict=strict)
        except LogError:
            pass


# --- the spec parser --------------------------------------------------------------------------------

SPEC_TEXT = BUNDLED_SPEC.read_text()
#: The bundled spec with every [deadline] and [fallback] number it may hold set, so that they are fuzzed too
#: (inline mode: the runtime that runs an accepted spec starts no thread).
FUZZ_SPEC_TEXT = SPEC_TEXT.replace("budget_ms = 20.0\n", "budget_ms = 20.0\nmode = \"inline\"\nhang_limit_ms = 1000\n"
                                   "no_data_ms = 0\nreserve_ms = 1.0\nwarmup = 2\n").replace(
    'action = "idle"\n', 'action = "idle"\nstrategy = "hold_last"\nhold_ms = 100\n')
FUZZ_LOG_ROWS = BUNDLED_LOG.read_text().splitlines()[:65]
toml_values = st.one_of(st.integers(-5, 100), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                        st.text(max_size=8), st.lists(st.floats(-50, 50), max_size=8),
                        st.lists(st.text(max_size=3), max_size=3), st.just([[1.0, 0.0], [0.0, 1.0]]))
KEYS = ["range_min", "range_max", "saturation_tolerance", "saturated_min_samples", "stuck_min_spread",
        "stuck_frames", "max_gap_s", "min_fresh_fraction", "threshold", "scale", "mean", "inv_cov", "features",
        "false_alarm_rate", "window", "hop", "channels", "budget_ms", "min_confidence", "action", "gap",
        "out_of_range", "sha256", "labels", "offset", "sample_rate_hz", "hang_limit_ms", "no_data_ms",
        "reserve_ms", "warmup", "hold_ms"]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == math.inf else "-inf" if value == -math.inf
                                             else repr(value))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


@FAST
@given(edits=st.lists(st.tuples(st.sampled_from(KEYS), toml_values), min_size=1, max_size=4))
@example(edits=[("budget_ms", math.inf)])  # issue 12: accepted, then an OverflowError in the loop
@example(edits=[("budget_ms", 1e308)])
@example(edits=[("hang_limit_ms", math.inf)])
@example(edits=[("no_data_ms", math.inf)])
@example(edits=[("hold_ms", math.inf)])
@example(edits=[("offset", [math.inf] * 6)])
def test_the_spec_parser_rejects_bad_values_with_one_spec_error(tmp_path_factory, edits):
    """Set known keys of the bundled spec (its [checks], [ood], [deadline], [fallback] too) to values of any type.

    A spec is either refused with one SpecError or ModelError, or it runs: the runtime it builds replays a short
    log to the end without raising. (It used to be enough not to raise at load, and ``budget_ms = inf`` passed
    here and then ended the service in an OverflowError.)
    """
    lines = FUZZ_SPEC_TEXT.splitlines()
    for key, value in edits:
        for i, line in enumerate(lines):
            if line.split("=")[0].strip() == key:
                lines[i] = f"{key} = {toml_value(value)}"
                break
    path = tmp_path_factory.mktemp("spec") / "basic_motions.toml"
    path.write_text("\n".join(lines) + "\n")
    (path.parent / "basic_motions.tflite").write_bytes((BUNDLED_SPEC.parent / "basic_motions.tflite").read_bytes())
    log = path.parent / "log.csv"
    log.write_text("\n".join(FUZZ_LOG_ROWS) + "\n")
    try:
        spec, engine = open_model(str(path))
        build_guard(spec)
        options = runtime_options(spec, argparse.Namespace())
    except (SpecError, ModelError):
        return
    recorded = read_log(log)
    source = LogSource(recorded, channel_columns(recorded, spec.channels, engine.channels, str(log)), spec.channels)
    summary = Runtime(spec, engine, source, **options).run()
    assert summary["frames"] == len(FUZZ_LOG_ROWS) - 1


@FAST
@given(data=st.binary(max_size=1024), keep=st.integers(0, len(SPEC_TEXT)))
def test_the_spec_parser_takes_any_bytes(tmp_path_factory, data, keep):
    path = tmp_path_factory.mktemp("spec") / "m.toml"
    path.write_bytes(SPEC_TEXT.encode()[:keep] + data)
    try:
        load_spec(path)
    except SpecError:
        pass


# --- the model loader -------------------------------------------------------------------------------

MODEL = dense_model(8, 2, 3, seed=1)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2 ** 32 - 1), edits=st.integers(1, 8))
def test_the_model_loader_rejects_corrupt_models_with_a_model_error(tmp_path_factory, seed, edits):
    rng = random.Random(seed)
    data = bytearray(MODEL)
    for _ in range(edits):
        at = rng.randrange(len(data))
        how = rng.random()
        if how < 0.6:
            data[at] = rng.randrange(256)
        elif how < 0.8:
            del data[at:at + rng.randint(1, 64)]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    path = tmp_path_factory.mktemp("model") / "m.tflite"
    path.write_bytes(bytes(data))
    try:
        engine = Engine(path)
    except ModelError:
        return
    assert engine.window >= 1 and engine.channels >= 1 and engine.output_size >= 1


SEGFAULTING_MODEL = Path(__file__).parent / "data" / "segfaulting_model.tflite"


def test_a_model_that_crashes_the_interpreter_is_refused_with_one_line():
    """A 624-byte mutation of a builder model (found by scripts/fuzz_inputs.py) that kills LiteRT 2.3.0 with
    SIGSEGV inside Interpreter(model_content=...): the load probe turns that into a ModelError."""
    raw = subprocess.run([sys.executable, "-c", "import sys; from edge_infer.model.backends import resolve_backend; "
                          "_, cls = resolve_backend(None); cls(model_content=open(sys.argv[1], 'rb').read())",
                          str(SEGFAULTING_MODEL)], capture_output=True, timeout=300, cwd=ROOT)
    result = run_cli("inspect", str(SEGFAULTING_MODEL))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    if raw.returncode < 0:  # this backend crashes on it: the message must say so
        assert "crashes the" in result.stderr and "SIGSEGV" in result.stderr


# --- the input guard --------------------------------------------------------------------------------

samples = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(max_examples=100, deadline=None, database=None)
@given(rows=st.lists(st.lists(samples, min_size=6, max_size=6), min_size=32, max_size=60),
       steps=st.lists(st.sampled_from([0.1, 0.1, 0.1, 0.0, -0.1, 0.5, math.nan]), min_size=60, max_size=60))
def test_the_guard_judges_any_window_without_raising(rows, steps):
    spec = load_spec(BUNDLED_SPEC)
    guard = build_guard(spec)
    buffer = WindowBuffer(spec.window, len(spec.channels), spec.hop)
    t = 0.0
    for i, row in enumerate(rows):
        t += steps[i]
        values = np.array(row, dtype=np.float32)
        guard.on_frame(Frame(seq=i, t=t, recv_ns=0, values=values, label=None, device_seq=None))
        if buffer.push(values):
            answer = guard.check_window(buffer.view())
            assert answer is None or answer.reason in WINDOW_REASONS
            if not np.isfinite(buffer.view()).all():
                assert answer is not None and answer.reason is Reason.NON_FINITE
    assert sum(guard.failed.values()) >= 0 and guard.summary()["windows"] == guard.windows

