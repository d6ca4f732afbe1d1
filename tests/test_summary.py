from edge_infer.decide.decision import Decision
from edge_infer.decide.reasons import Reason
from edge_infer.sinks.stats import RunStats, format_summary


def decision(action, label, source="model", reason=None, latency_us=100.0):
    return Decision(seq=0, t=0.0, action=action, source=source, reason=reason, latency_us=latency_us,
                    invoke_us=10.0, output=[0.1, 0.9], label=label)


def test_counts_sources_reasons_and_late_decisions():
    stats = RunStats(budget_ms=1.0)
    stats.on_decision(decision("a", "a"))
    stats.on_decision(decision("idle", "a", "fallback", Reason.DEADLINE, latency_us=1500.0))
    stats.on_decision(decision("b", "a", "model", Reason.GAP))
    out = stats.to_dict()
    assert (out["decisions"], out["model_decisions"], out["fallback_decisions"], out["late_decisions"]) == (3, 2, 1, 1)
    assert out["fallback_reasons"] == {"deadline": 1} and out["flagged_reasons"] == {"gap": 1}
    assert out["accuracy"] == round(1 / 3, 4) and out["labelled_windows"] == 3


def test_class_indices_are_not_scored_against_class_names():
    stats = RunStats(budget_ms=1.0)
    stats.on_decision(decision(1, "Running"))  # a bare model: index vs name — unknown, not wrong
    assert stats.to_dict()["accuracy"] is None
    stats.on_decision(decision(1, "1"))  # numeric labels compare
    stats.on_decision(decision(-1, "0", "fallback", Reason.BUSY))
    assert stats.to_dict()["accuracy"] == 0.5


def test_human_summary_reads_like_prose():
    stats = RunStats(budget_ms=1.0)
    stats.on_decision(decision("idle", "a", "fallback", Reason.DEADLINE))
    stats.on_decision(decision("idle", "a", "fallback", Reason.BUSY))
    text = format_summary(dict(stats.to_dict(), elapsed_s=0.5, model="m", backend="litert"))
    assert "fallback: 2 (busy 1, deadline 1)" in text and "accuracy 0.000 over 2 labelled windows" in text
