"""The batched input checks (``eval``) give the loop's guard's verdicts, window for window, chunk sizes aside."""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer.checks.batch import BatchGuard
from edge_infer.checks.config import POLICY_REASONS, ChecksConfig
from edge_infer.checks.guard import InputGuard
from edge_infer.checks.ood import fit, window_features
from edge_infer.decide.decision import Decision
from edge_infer.decide.reasons import Reason
from edge_infer.frame import Frame

WINDOW, CHANNELS, HOP = 16, 3, 2


def damaged_stream(rows: int, seed: int):
    rng = np.random.default_rng(seed)
    t = np.arange(rows) * 0.01
    x = (rng.normal(size=(rows, CHANNELS)) * [1.0, 2.0, 0.5]).astype(np.float32)
    for k, start in enumerate(rng.integers(0, rows - 40, 14)):
        kind = k % 7
        if kind == 0:
            x[start, rng.integers(0, CHANNELS)] = np.nan
        elif kind == 1:
            x[start, 0] = 50.0                      # out of range
        elif kind == 2:
            x[start:start + 4, 1] = 8.0             # at the limit: saturated
        elif kind == 3:
            x[start:start + 20, 2] = x[start, 2]    # stuck
        elif kind == 4:
            x[start:start + 15] = x[start]          # stale
        elif kind == 5:
            t[start:] += 0.2                        # a gap
        else:
            x[start:start + 20] += 3.0              # out of distribution
    return t, x


def config(flags=()) -> ChecksConfig:
    rng = np.random.default_rng(1)
    clean = (rng.normal(size=(400, WINDOW, CHANNELS)) * [1.0, 2.0, 0.5])
    ood = fit(clean)
    distances = ood.distance(window_features(clean))
    ood.threshold = float(np.median(distances))  # half the clean windows near or over it: many close calls
    policy = {r: ("flag" if r in flags else "fallback") for r in POLICY_REASONS}
    return ChecksConfig(window=WINDOW, channels=CHANNELS, range_min=np.array([-8.0, -8.0, -8.0]),
                        range_max=np.array([8.0, 8.0, 8.0]), stuck_min_spread=np.array([0.05, 0.05, 0.05]),
                        stuck_frames=8, check_time=True, max_gap_s=0.015, min_fresh_fraction=0.6, policy=policy,
                        ood=ood)


def loop_verdicts(cfg: ChecksConfig, t: np.ndarray, x: np.ndarray):
    guard = InputGuard(cfg)
    out = []
    buffer = []
    for i in range(len(t)):
        guard.on_frame(Frame(seq=i, t=float(t[i]), recv_ns=0, values=x[i], label=None, device_seq=None))
        buffer.append(x[i])
        if i + 1 < WINDOW or (i + 1 - WINDOW) % HOP:
            continue
        answer = guard.check_window(np.array(buffer[-WINDOW:]))
        decision = guard.review(Decision(seq=i, t=0.0, action=0, source="fallback" if answer else "model",
                                         reason=answer.reason if answer else None, latency_us=0.0, invoke_us=None,
                                         output=[1.0], label=None))
        fallback = int(answer.reason) if answer else 0
        flag = 0 if answer or decision.reason is None else int(decision.reason)
        out.append((i, fallback, flag, decision.ood_score))
    return out, guard.summary()


def batch_verdicts(cfg: ChecksConfig, t: np.ndarray, x: np.ndarray, chunk: int):
    guard = BatchGuard(cfg)
    out = []
    for start in range(0, len(t), chunk):
        ct, cx = t[start:start + chunk], x[start:start + chunk]
        g = start + np.arange(len(ct))
        ends = np.flatnonzero((g >= WINDOW - 1) & ((g - (WINDOW - 1)) % HOP == 0))
        v = guard.check(ct, cx, ends)
        out += [(int(start + e), int(a), int(b), None if np.isnan(s) else float(s))
                for e, a, b, s in zip(ends, v.fallback, v.flag, v.ood)]
    return out, guard.summary()


@pytest.mark.parametrize("flags", [(), (Reason.GAP, Reason.STUCK, Reason.OUT_OF_DISTRIBUTION)])
@pytest.mark.parametrize("chunk", [5, 64, 3000])
def test_batched_checks_are_the_guards(flags, chunk: int) -> None:
    cfg = config(flags)
    t, x = damaged_stream(1500, seed=len(flags) + chunk)
    theirs, their_summary = loop_verdicts(cfg, t, x)
    ours, our_summary = batch_verdicts(cfg, t, x, chunk)
    assert [w[:3] for w in ours] == [w[:3] for w in theirs]
    for a, b in zip(ours, theirs):
        assert (a[3] is None) == (b[3] is None)
        if a[3] is not None:
            assert abs(a[3] - b[3]) <= 1e-9 * max(1.0, b[3])
    assert our_summary["failed"] == their_summary["failed"]
    assert len(set(their_summary["failed"])) >= 6  # the faults were seen at all
    assert abs(our_summary["ood"]["max_score"] - their_summary["ood"]["max_score"]) <= 1e-3
