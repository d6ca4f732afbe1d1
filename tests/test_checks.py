"""Input checks (edge_infer/checks): the spec tables, each check and its reason, policies, recovery, and the
decision loop skipping the model for a window that failed.

The guard is fed synthetic frames whose faults are placed by hand, so every expectation is exact: which
windows get which reason, and which stay model decisions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
from conftest import read_jsonl, run_cli

from edge_infer.checks import ood
from edge_infer.checks.config import WINDOW_REASONS, parse_checks
from edge_infer.checks.guard import InputGuard, build_guard
from edge_infer.checks.stats import WindowStats
from edge_infer.deadline.scheduler import InlineScheduler
from edge_infer.decide.decision import Decision, DecisionRule
from edge_infer.decide.reasons import Reason
from edge_infer.errors import SpecError
from edge_infer.frame import Frame
from edge_infer.io import read_log
from edge_infer.model.loader import open_model
from edge_infer.model.spec import load_spec
from edge_infer.runtime import Runtime
from edge_infer.sinks.base import Sink
from edge_infer.sources.log_replay import LogSource
from edge_infer.testing.tflite_builder import dense_model, write_model
from edge_infer.window import WindowBuffer

# NaN and Inf are what the checks look for; the guard silences numpy's warnings about them with a filter,
# which pytest replaces by its own while a test runs.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

WINDOW, HOP, CHANNELS, HZ = 16, 4, 3, 10.0
RANGE = 10.0  # every channel's range is [-RANGE, RANGE]
CHECKS = f"""
[checks]
range_min = [{-RANGE}, {-RANGE}, {-RANGE}]
range_max = [{RANGE}, {RANGE}, {RANGE}]
stuck_frames = 8
stuck_min_spread = [0.05, 0.05, 0.05]
min_fresh_fraction = 0.5
"""


def spec_text(model: str = "m.tflite", tables: str = CHECKS, decision: str = "") -> str:
    return f"""
[model]
file = "{model}"
[input]
channels = ["a", "b", "c"]
sample_rate_hz = {HZ}
window = {WINDOW}
hop = {HOP}
[output]
kind = "classes"
labels = ["x", "y", "z"]
[decision]
{decision}
[fallback]
action = "safe"
{tables}
"""


def clean_frames(n: int, seed: int = 0) -> np.ndarray:
    """Noisy slow sines, well inside the range and never still."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return (3.0 * np.sin(t / 7.0 + np.arange(CHANNELS)) + rng.normal(0.0, 0.5, (n, CHANNELS))).astype(np.float32)


def ood_dict(seed: int = 1) -> dict:
    """An [ood] table fitted on clean synthetic windows, threshold at the 99.9th percentile of other clean ones."""
    fit_windows = np.lib.stride_tricks.sliding_window_view(clean_frames(3000, seed), WINDOW, axis=0)
    model = ood.fit(fit_windows.transpose(0, 2, 1))
    held = np.lib.stride_tricks.sliding_window_view(clean_frames(3000, seed + 1), WINDOW, axis=0)
    model.threshold = ood.threshold_at(model.distance(ood.window_features(held.transpose(0, 2, 1))), 0.001)
    model.false_alarm_rate = 0.001
    return model.to_table()


def ood_table(table: Optional[dict] = None) -> str:
    table = ood_dict() if table is None else table
    return "[ood]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())


def make_guard(tmp_path: Path, tables: str = CHECKS, rule: Optional[DecisionRule] = None,
               decision: str = "") -> InputGuard:
    path = tmp_path / "m.toml"
    path.write_text(spec_text(tables=tables, decision=decision))
    return build_guard(load_spec(path), rule)


def run(guard: InputGuard, values: np.ndarray, times: Optional[np.ndarray] = None) -> Dict[int, Optional[Reason]]:
    """Window end seq -> the reason the guard gives it (a fallback's, or a flag's), None for a clean window."""
    times = np.arange(len(values)) / HZ if times is None else times
    buffer = WindowBuffer(WINDOW, CHANNELS, HOP)
    out: Dict[int, Optional[Reason]] = {}
    for i, (t, row) in enumerate(zip(times, values)):
        guard.on_frame(Frame(seq=i, t=float(t), recv_ns=0, values=row, label=None, device_seq=None))
        if buffer.push(row):
            answer = guard.check_window(buffer.view())
            decision = guard.review(Decision(seq=i, t=float(t), action="x", source="model", reason=None,
                                             latency_us=0.0, invoke_us=None, output=[0.9, 0.05, 0.05],
                                             label=None))
            out[i] = answer.reason if answer is not None else decision.reason
    return out


def holding(seqs: range, out: Dict[int, Optional[Reason]], least: int = 1) -> List[int]:
    """Window ends whose window holds at least ``least`` of ``seqs``."""
    return [e for e in out if len(set(range(e - WINDOW + 1, e + 1)) & set(seqs)) >= least]


# --- the spec tables ------------------------------------------------------------------------------

def test_without_a_checks_table_only_non_finite_values_are_checked(tmp_path):
    guard = make_guard(tmp_path, tables="")
    values = clean_frames(80)
    values[40:42, 1] = 1e6          # far out of any range: not checked without [checks]
    values[60, 0] = np.nan
    times = np.arange(80) / HZ
    times[20] = times[19]           # a repeated timestamp: not checked without [checks]
    out = run(guard, values, times)
    assert {e for e, r in out.items() if r is not None} == set(holding(range(60, 61), out))
    assert all(out[e] is Reason.NON_FINITE for e in holding(range(60, 61), out))


@pytest.mark.parametrize("tables, key", [
    ("[checks]\nrange_min = [0, 0]\nrange_max = [1, 1, 1]", "[checks].range_min"),
    ("[checks]\nrange_min = [0, 0, 0]", "[checks].range_max"),
    ("[checks]\nrange_min = [0, 0, 0]\nrange_max = [1, 0, 1]", "[checks].range_max"),
    ("[checks]\nrange_min = [0, 0, nan]\nrange_max = [1, 1, 1]", "[checks].range_min"),
    ("[checks]\nsaturation_tolerance = 0.5", "[checks].saturation_tolerance"),
    ("[checks]\nsaturated_min_samples = 0", "[checks].saturated_min_samples"),
    ("[checks]\nstuck_frames = 1", "[checks].stuck_frames"),
    (f"[checks]\nstuck_frames = {WINDOW + 1}", "[checks].stuck_frames"),
    ("[checks]\nstuck_min_spread = [0.1, -1, 0.1]", "[checks].stuck_min_spread"),
    ("[checks]\nmax_gap_s = 0", "[checks].max_gap_s"),
    ("[checks]\nmax_gap_s = \"1\"", "[checks].max_gap_s"),
    ("[checks]\nmin_fresh_fraction = 1.5", "[checks].min_fresh_fraction"),
    ("[checks]\nrange = [0, 1]", "[checks].range"),
    ("[checks.policy]\ngap = \"ignore\"", "[checks.policy].gap"),
    ("[checks.policy]\ndeadline = \"flag\"", "[checks.policy].deadline"),
    ("[checks.policy]\nbogus = \"flag\"", "[checks.policy].bogus"),
    ("[ood]\nfeatures = [\"mean\", \"variance\"]", "[ood].mean"),
    ("[ood]\nfeatures = [\"min\"]\nmean = []\nscale = []\ninv_cov = []\nthreshold = 1", "[ood].features"),
])
def test_a_wrong_key_fails_at_load_naming_it(tmp_path, tables, key):
    path = tmp_path / "m.toml"
    path.write_text(spec_text(tables=tables))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert key in str(error.value)


@pytest.mark.parametrize("key, value", [
    ("threshold", -1.0),
    ("scale", "zero"),
    ("inv_cov", "asymmetric"),
    ("inv_cov", "indefinite"),
    ("mean", "short"),
])
def test_a_broken_ood_table_fails_at_load_naming_the_key(tmp_path, key, value):
    table = ood_dict()
    if value == "zero":
        table["scale"][0] = 0.0
    elif value == "asymmetric":
        table["inv_cov"][0][1] += 1.0
    elif value == "indefinite":
        table["inv_cov"][0][0] = -50.0
    elif value == "short":
        table["mean"] = table["mean"][:-1]
    else:
        table[key] = value
    path = tmp_path / "m.toml"
    path.write_text(spec_text(tables=ood_table(table)))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert f"[ood].{key}" in str(error.value)


def test_default_gap_tolerance_comes_from_the_sample_rate(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(spec_text(tables="[checks]"))
    config = parse_checks(load_spec(path))
    assert config.check_time and config.max_gap_s == pytest.approx(1.5 / HZ)
    assert all(config.policy[r] == "fallback" for r in WINDOW_REASONS)


# --- each check ----------------------------------------------------------------------------------

def test_clean_windows_pass_every_check(tmp_path):
    guard = make_guard(tmp_path, CHECKS + ood_table())
    out = run(guard, clean_frames(400, seed=7))
    assert set(out.values()) == {None}
    assert guard.summary()["failed"] == {}


def test_non_finite_values_fall_back_only_while_in_the_window(tmp_path):
    for bad in (np.nan, np.inf, -np.inf):
        values = clean_frames(100)
        values[50, 2] = bad
        out = run(make_guard(tmp_path, CHECKS + ood_table()), values)
        hit = holding(range(50, 51), out)
        assert hit and all(out[e] is Reason.NON_FINITE for e in hit)
        assert all(out[e] is None for e in out if e not in hit)  # the windows after it recover


def test_out_of_range_and_saturation(tmp_path):
    values = clean_frames(160)
    values[40, 0] = RANGE * 1.5                 # beyond the range
    values[80, 1] = values[81, 1] = -RANGE      # two samples pinned at the lower limit
    values[120, 2] = RANGE                      # one sample at the limit: a touch, not saturation
    out = run(make_guard(tmp_path), values)
    assert all(out[e] is Reason.OUT_OF_RANGE for e in holding(range(40, 41), out))
    assert all(out[e] is Reason.SATURATED for e in holding(range(80, 82), out, least=2))
    assert all(out[e] is None for e in holding(range(120, 121), out))


def test_a_stuck_channel_is_found_within_stuck_frames_and_recovers(tmp_path):
    values = clean_frames(200)
    values[60:100, 1] = values[60, 1]                                   # frozen exactly
    values[140:170, 2] = 1.0 + np.linspace(-0.01, 0.01, 30)            # frozen with a little drift
    out = run(make_guard(tmp_path), values)
    for stuck in (range(60, 100), range(140, 170)):
        hit = holding(stuck, out, least=8)
        assert hit and all(out[e] is Reason.STUCK for e in hit)
    clear = [e for e in out if not holding(range(60, 100), {e: None}) and not holding(range(140, 170), {e: None})]
    assert all(out[e] is None for e in clear)


def test_repeated_samples_make_a_window_stale(tmp_path):
    values = clean_frames(120)
    values[50:62] = values[49]  # the link re-sends one sample: 12 repeats, more than half of 16
    out = run(make_guard(tmp_path, CHECKS.replace("stuck_min_spread", "#")), values)
    stale = [e for e in out if out[e] is Reason.STALE]
    assert stale and all(len(set(range(e - WINDOW + 1, e + 1)) & set(range(50, 62))) > WINDOW // 2
                         for e in stale)
    assert all(out[e] is None for e in out if e not in stale)


@pytest.mark.parametrize("fault", ["dropped", "repeated", "backwards"])
def test_timestamp_faults_are_gaps_in_the_windows_that_span_them(tmp_path, fault):
    values = clean_frames(100)
    times = np.arange(100) / HZ
    if fault == "dropped":
        times[50:] += 1.0 / HZ
    elif fault == "repeated":
        times[50] = times[49]
    else:
        times[50] = times[49] - 0.05  # and the step after it is 2.5 periods: a gap too
    out = run(make_guard(tmp_path), values, times)
    spanning = holding(range(49, 51), out, least=2)
    assert spanning and all(out[e] is Reason.GAP for e in spanning)
    assert all(out[e] is None for e in out if e < 49 or e - WINDOW + 1 > 51)


def test_a_shifted_channel_is_out_of_distribution(tmp_path):
    values = clean_frames(200)
    values[100:, 0] += 5.0  # inside the range, never seen in training
    guard = make_guard(tmp_path, CHECKS + ood_table())
    out = run(guard, values)
    inside = [e for e in out if e - WINDOW + 1 >= 100]
    assert inside and all(out[e] is Reason.OUT_OF_DISTRIBUTION for e in inside)
    assert guard.summary()["ood"]["max_score"] > guard.config.ood.threshold


# --- several at once, policies ---------------------------------------------------------------------

def test_the_first_reason_decides_and_every_failure_is_counted(tmp_path):
    values = clean_frames(100)
    values[50, 0] = np.nan
    times = np.arange(100) / HZ
    times[50:] += 1.0  # a gap at the same frame
    guard = make_guard(tmp_path)
    out = run(guard, values, times)
    both = holding(range(49, 51), out, least=2)
    assert all(out[e] is Reason.NON_FINITE for e in both)
    assert guard.failed[Reason.GAP] == len(both) and guard.failed[Reason.NON_FINITE] == len(both)


def test_a_flag_policy_lets_the_model_decide_and_marks_the_record(tmp_path):
    values = clean_frames(100)
    times = np.arange(100) / HZ
    times[50:] += 1.0
    guard = make_guard(tmp_path, CHECKS + '\n[checks.policy]\ngap = "flag"\n')
    buffer = WindowBuffer(WINDOW, CHANNELS, HOP)
    flagged = []
    for i, (t, row) in enumerate(zip(times, values)):
        guard.on_frame(Frame(seq=i, t=float(t), recv_ns=0, values=row, label=None, device_seq=None))
        if buffer.push(row):
            assert guard.check_window(buffer.view()) is None  # the model is asked
            decision = guard.review(Decision(seq=i, t=0.0, action="x", source="model", reason=None,
                                             latency_us=0.0, invoke_us=1.0, output=[1.0], label=None))
            if decision.reason is not None:
                flagged.append((i, decision.reason))
            late = guard.review(Decision(seq=i, t=0.0, action="safe", source="fallback", reason=Reason.DEADLINE,
                                         latency_us=0.0, invoke_us=None, output=None, label=None))
            assert late.reason is Reason.DEADLINE  # a fallback keeps its own reason
    assert flagged and {r for _, r in flagged} == {Reason.GAP}


def test_low_confidence_can_be_flagged_instead_of_falling_back(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(spec_text(tables=CHECKS + '[checks.policy]\nlow_confidence = "flag"\n',
                              decision="min_confidence = 0.8"))
    spec = load_spec(path)
    rule = DecisionRule(spec)
    guard = build_guard(spec, rule)
    assert rule.decide(np.array([0.5, 0.3, 0.2]))[1] is None  # the rule no longer falls back...
    out = run(guard, clean_frames(40))  # ...the guard flags (run() gives every decision output 0.9)
    assert set(out.values()) == {None}
    unsure = guard.review(Decision(seq=0, t=0.0, action="x", source="model", reason=None, latency_us=0.0,
                                   invoke_us=1.0, output=[0.5, 0.3, 0.2], label=None))
    assert unsure.reason is Reason.LOW_CONFIDENCE and unsure.source == "model"


# --- the shared sums --------------------------------------------------------------------------------

def test_window_stats_give_the_reference_features_and_gates():
    rng = np.random.default_rng(3)
    center, half = np.array([1.0, -2.0, 0.5]), np.array([4.0, 3.0, 2.0])
    stats = WindowStats(WINDOW, CHANNELS, 8, center, half)
    features, gate, stuck = stats.mean_and_variance(), stats.beyond_gate(), stats.stuck(np.full(CHANNELS, 0.2))
    for _ in range(200):
        window = (center + rng.uniform(-1.1, 1.1, (WINDOW, CHANNELS)) * half * rng.uniform(0, 1, CHANNELS))
        window[8:, rng.integers(CHANNELS)] *= rng.choice([1.0, 0.0])
        window = window.astype(np.float32)
        stats.update(window)
        np.testing.assert_allclose(features @ stats.sums, ood.window_features(window[None])[0], rtol=1e-9,
                                   atol=1e-9)
        assert (gate @ stats.sums > 0) == bool((np.abs(window - center) > half).any())
        tail_std = window[-8:].astype(np.float64).std(axis=0)
        np.testing.assert_array_equal(stuck @ stats.sums > 0, tail_std < 0.2)


def test_the_guard_scores_windows_as_the_reference_distance(tmp_path):
    guard = make_guard(tmp_path, CHECKS + ood_table())
    values = clean_frames(300, seed=11)
    buffer = WindowBuffer(WINDOW, CHANNELS, HOP)
    scores, windows = [], []
    for i, row in enumerate(values):
        guard.on_frame(Frame(seq=i, t=i / HZ, recv_ns=0, values=row, label=None, device_seq=None))
        if buffer.push(row):
            guard.check_window(buffer.view())
            scores.append(guard.review(Decision(seq=i, t=0.0, action="x", source="model", reason=None,
                                                latency_us=0.0, invoke_us=None, output=None,
                                                label=None)).ood_score)
            windows.append(buffer.view().copy())
    reference = guard.config.ood.distance(ood.window_features(np.array(windows)))
    np.testing.assert_allclose(scores, reference, rtol=1e-6)


# --- in the decision loop ----------------------------------------------------------------------------

class Recorder(Sink):
    def __init__(self) -> None:
        self.decisions: List[Decision] = []

    def on_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)


class CountingScheduler(InlineScheduler):
    """The real inline scheduler, counting the windows it is asked to run."""

    runs = 0

    def run(self, window, deadline_ns, pending=None):  # type: ignore[override]
        self.runs += 1
        return super().run(window, deadline_ns, pending)


def write_log(path: Path, values: np.ndarray) -> None:
    lines = ["t,a,b,c"] + [f"{i / HZ:.1f}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")


def test_a_failed_check_skips_the_model_and_the_loop_recovers(tmp_path):
    write_model(tmp_path / "m.tflite", dense_model(WINDOW, CHANNELS, 3, seed=2))
    (tmp_path / "m.toml").write_text(spec_text(tables=CHECKS + ood_table()))
    values = clean_frames(200)
    values[100, 1] = np.nan
    write_log(tmp_path / "log.csv", values)
    spec, engine = open_model(str(tmp_path / "m.toml"))
    log = read_log(tmp_path / "log.csv")
    scheduler = CountingScheduler(engine)
    sink = Recorder()
    runtime = Runtime(spec, engine, LogSource(log, [0, 1, 2], spec.channels), [sink], scheduler=scheduler)
    runtime.start()  # the warm-up runs windows of its own through the scheduler
    scheduler.runs = 0
    summary = runtime.run()
    by_seq = {d.seq: d for d in sink.decisions if d.reason is not Reason.SHUTDOWN}
    blocked = [s for s in by_seq if s - WINDOW + 1 <= 100 <= s]
    assert blocked and all(by_seq[s].source == "fallback" and by_seq[s].reason is Reason.NON_FINITE
                           and by_seq[s].invoke_us is None and by_seq[s].ood_score is None for s in blocked)
    assert all(by_seq[s].source == "model" and by_seq[s].ood_score is not None for s in by_seq if s not in blocked)
    assert scheduler.runs == len(by_seq) - len(blocked)
    assert summary["input_checks"]["failed"] == {"non_finite": len(blocked)}
    assert summary["input_checks"]["windows"] == len(by_seq)


def test_the_bad_input_summary_is_in_json_and_in_the_human_summary(tmp_path):
    write_model(tmp_path / "m.tflite", dense_model(WINDOW, CHANNELS, 3, seed=2))
    (tmp_path / "m.toml").write_text(spec_text(tables=CHECKS))
    values = clean_frames(200)
    values[60:90, 0] = values[60, 0]
    write_log(tmp_path / "log.csv", values)
    as_json = run_cli("replay", str(tmp_path / "log.csv"), "--model", str(tmp_path / "m.toml"), "--json",
                      "--decisions", str(tmp_path / "d.jsonl"), check=True)
    summary = json.loads(as_json.stdout)
    stuck = summary["input_checks"]["failed"]["stuck"]
    assert stuck > 0 and summary["fallback_reasons"] == {"stuck": stuck}
    records = read_jsonl(tmp_path / "d.jsonl")
    assert all("ood_score" in r for r in records)
    human = run_cli("replay", str(tmp_path / "log.csv"), "--model", str(tmp_path / "m.toml"), check=True)
    assert f"input checks: {summary['input_checks']['windows']} windows, failed: stuck {stuck}" in human.stdout


def test_a_bare_model_checks_non_finite_values_only(tmp_path):
    write_model(tmp_path / "m.tflite", dense_model(WINDOW, CHANNELS, 3, seed=2))
    values = clean_frames(100)
    values[50, 0] = math.inf
    values[70:, 1] = 1e9
    write_log(tmp_path / "log.csv", values)
    result = run_cli("replay", str(tmp_path / "log.csv"), "--model", str(tmp_path / "m.tflite"), "--json",
                     check=True)
    summary = json.loads(result.stdout)
    assert summary["fallback_reasons"] == {"non_finite": summary["input_checks"]["failed"]["non_finite"]}
    assert "ood" not in summary["input_checks"]


# --- read ahead: a log's windows checked a block at once (edge_infer/checks/ahead.py) -----------------------

def faulty_frames(n: int = 1500) -> "tuple[np.ndarray, np.ndarray]":
    """Clean sines with every fault the checks look for, and some near their thresholds, in the first 700
    frames (a clean stretch follows); and their times."""
    values = clean_frames(n, seed=5)
    values[40, 0] = np.nan
    values[90, 1] = np.inf
    values[140, 2] = RANGE * 1.5                       # beyond the range
    values[180, 1] = values[181, 1] = -RANGE           # saturated
    values[230:270, 0] = values[230, 0]                # stuck
    values[300:316, 2] = 1.0 + np.linspace(-0.003, 0.003, 16)  # almost stuck: near the spread threshold
    values[350:362] = values[349]                      # stale
    values[420, 0] = 3e38                              # huge but finite: spoils the running sums of its block
    values[500:530] += 2.5                             # shifted: out of distribution, and near it on the edges
    times = np.arange(n) / HZ
    times[600:] += 0.5                                 # a gap
    return values, times


def run_with_reads(guard: InputGuard, values: np.ndarray, times: np.ndarray, ahead: bool):
    """run(), recording per window end (reason, OOD score) and counting the per-window fast path's calls."""
    if ahead:
        guard.read_ahead(lambda start, stop: values[start:stop])
    calls = []
    per_window = guard._window_check
    guard._window_check = lambda view: calls.append(1) or per_window(view)
    buffer = WindowBuffer(WINDOW, CHANNELS, 1)
    out = {}
    for i, (t, row) in enumerate(zip(times, values)):
        guard.on_frame(Frame(seq=i, t=float(t), recv_ns=0, values=row, label=None, device_seq=None))
        if buffer.push(row):
            answer = guard.check_window(buffer.view())
            decision = guard.review(Decision(seq=i, t=float(t), action="x", source="model", reason=None,
                                             latency_us=0.0, invoke_us=None, output=[0.9, 0.05, 0.05], label=None))
            out[i] = (answer.reason if answer is not None else decision.reason, decision.ood_score)
    return out, len(calls), guard.summary()


@pytest.mark.parametrize("tables", [CHECKS + "{ood}", "{ood}", CHECKS, ""])
def test_reading_ahead_gives_every_window_the_per_window_verdict(tmp_path, tables):
    """Same reason for every window, same counts, OOD scores equal but for the last bits; the faulty windows
    and their blocks take the per-window path, clean ones do not."""
    tables = tables.format(ood=ood_table())
    values, times = faulty_frames()
    each, each_calls, each_summary = run_with_reads(make_guard(tmp_path, tables), values, times, ahead=False)
    ahead, ahead_calls, ahead_summary = run_with_reads(make_guard(tmp_path, tables), values, times, ahead=True)
    assert [v[0] for v in ahead.values()] == [v[0] for v in each.values()]
    assert ahead_summary == each_summary
    for (reason, score), (_, reference) in zip(ahead.values(), each.values()):
        assert (score is None) == (reference is None)
        if score is not None:
            assert score == pytest.approx(reference, rel=1e-12, abs=1e-12)
    assert set(v[0] for v in each.values()) - {None}  # the faults were found at all
    assert 0 < ahead_calls < each_calls * 0.7  # the clean blocks after the faults are cleared ahead


def test_a_window_at_the_ood_threshold_takes_the_per_window_path(tmp_path):
    """The margin: with the threshold set to a clean window's own score, that window is not cleared ahead
    (its block value could land on either side), and it gets the per-window verdict."""
    values, times = clean_frames(400, seed=9), np.arange(400) / HZ
    scores, _, _ = run_with_reads(make_guard(tmp_path, CHECKS + ood_table()), values, times, ahead=False)
    end, (_, score) = max(scores.items(), key=lambda item: item[1][1])
    for threshold in (score, np.nextafter(score, 0.0)):
        table = dict(ood_dict(), threshold=float(threshold))
        each, _, _ = run_with_reads(make_guard(tmp_path, CHECKS + ood_table(table)), values, times, ahead=False)
        ahead, calls, _ = run_with_reads(make_guard(tmp_path, CHECKS + ood_table(table)), values, times, ahead=True)
        assert ahead[end][0] == each[end][0]
        assert [v[0] for v in ahead.values()] == [v[0] for v in each.values()]
        assert calls >= 1


def test_a_threshold_changed_at_run_time_drops_the_verdicts_read_ahead(tmp_path):
    values, times = clean_frames(400, seed=9), np.arange(400) / HZ
    guard = make_guard(tmp_path, CHECKS + ood_table())
    guard.read_ahead(lambda start, stop: values[start:stop])
    buffer = WindowBuffer(WINDOW, CHANNELS, 1)
    reasons = []
    for i, row in enumerate(values):
        if i == 200:
            guard.set_thresholds(ood_threshold=1e-3)  # every window is out of distribution from here
        guard.on_frame(Frame(seq=i, t=float(times[i]), recv_ns=0, values=row, label=None, device_seq=None))
        if buffer.push(row):
            answer = guard.check_window(buffer.view())
            reasons.append((i, None if answer is None else answer.reason))
    assert all(r is None for i, r in reasons if i < 200)
    assert all(r is Reason.OUT_OF_DISTRIBUTION for i, r in reasons if i >= 200)
