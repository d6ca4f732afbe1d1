"""The fleet table and fallback bursts, from messages alone (the broker part is in test_fleet_mqtt.py)."""

from __future__ import annotations

import json

from edge_infer.fleet.bursts import BurstDetector
from edge_infer.fleet.watch import FleetView


def decisions(run, n, sources, reason="deadline"):
    records = [{"seq": i, "source": s, "reason": reason if s == "fallback" else None} for i, s in enumerate(sources)]
    return json.dumps({"run": run, "n": n, "time": "2026-12-01T00:00:00.000Z", "records": records}).encode()


def test_rates_reasons_and_repeats():
    view = FleetView(window_s=10.0)
    view.on_message("edge-infer/a/status", b"online", 100.0)
    view.on_message("edge-infer/a/decisions", decisions("r1", 1, ["model"] * 15 + ["fallback"] * 5), 101.0)
    view.on_message("edge-infer/a/decisions", decisions("r1", 1, ["model"] * 15 + ["fallback"] * 5), 102.0)  # repeat
    view.on_message("edge-infer/b/status", b"offline", 50.0, retained=True)
    view.on_message("edge-infer/other/thing", b"x", 102.0)
    view.on_message("elsewhere/a/decisions", b"{}", 102.0)
    rows = {row["device"]: row for row in view.rows(105.0)}
    assert set(rows) == {"a", "b"}
    a, b = rows["a"], rows["b"]
    assert a["status"] == "online" and a["decisions_per_s"] == 2.0 and a["fallback_rate"] == 0.25
    assert a["top_reasons"] == {"deadline": 5} and a["last_seen_s"] == 4.0 and a["decisions"] == 20
    assert b["status"] == "offline" and b["last_seen_s"] is None and b["fallback_rate"] is None
    later = {row["device"]: row for row in view.rows(200.0)}
    assert later["a"]["decisions_per_s"] == 0.0  # out of the window


def test_render_is_a_table_with_every_device():
    view = FleetView()
    assert "no device heard yet" in view.render(0.0)
    view.on_message("edge-infer/pi-7/status", b"online", 1.0)
    view.on_message("edge-infer/pi-7/events", json.dumps({"run": "r", "n": 1, "event": "connected"}).encode(), 1.0)
    lines = view.render(2.0).splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "STATUS", "DECISIONS/S"]
    assert lines[1].split()[:2] == ["pi-7", "online"] and lines[1].endswith("connected")


def message(n, **body):
    return json.dumps({"run": "r", "n": n, "time": "2026-12-01T00:00:00.000Z", **body}).encode()


def test_a_board_with_several_streams_has_a_row_per_stream_with_its_state():
    view = FleetView(window_s=10.0)
    view.on_message("edge-infer/gw/status", b"online", 100.0)
    records = [{"seq": i, "stream": name, "source": "fallback" if name == "m2" else "model",
                "reason": "no_data" if name == "m2" else None} for i in range(10) for name in ("m1", "m2")]
    view.on_message("edge-infer/gw/decisions", message(1, records=records), 101.0)
    view.on_message("edge-infer/gw/summary", message(2, summary={"decisions": 20, "streams": [
        {"stream": "m1", "state": "running"}, {"stream": "m2", "state": "running"},
        {"stream": "m3", "state": "no data", "fallback_reasons": {"no_data": 4}}]}), 101.0)
    view.on_message("edge-infer/gw/events", message(3, event="stream_state", streams={"m2": "failed: unplugged"}),
                    102.0)
    view.on_message("edge-infer/gw/events", message(4, event="fallback_burst", state="start", stream="m2"), 102.0)
    view.on_message("edge-infer/one/decisions", message(1, records=[{"seq": 0, "stream": "/var/x.csv",
                                                                      "source": "model"}]), 101.0)
    rows = {row["device"]: row for row in view.rows(105.0)}
    assert rows["one"]["streams"] == []  # one stream: the device's row is the stream's
    gw = rows["gw"]
    assert gw["decisions_per_s"] == 2.0 and gw["fallback_rate"] == 0.5 and gw["last_event"] == "fallback_burst"
    streams = {s["stream"]: s for s in gw["streams"]}
    assert list(streams) == ["m1", "m2", "m3"]
    assert streams["m1"]["state"] == "running" and streams["m1"]["fallback_rate"] == 0.0
    assert streams["m2"]["state"] == "failed: unplugged" and streams["m2"]["top_reasons"] == {"no_data": 10}
    assert streams["m2"]["last_event"] == "fallback_burst" and streams["m2"]["decisions"] == 10
    assert streams["m3"]["decisions_per_s"] == 0.0 and streams["m3"]["top_reasons"] == {"no_data": 4}
    lines = view.render(105.0).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("gw"))
    assert [line.split()[:2] for line in lines[at + 1:at + 4]] == [["m1", "running"], ["m2", "failed:"],
                                                                    ["m3", "no"]]
    assert lines[at + 1].startswith("  m1")


def test_a_burst_starts_at_half_the_window_and_ends_after_a_calm_window():
    detector = BurstDetector(window=10)
    events = []
    stream = ["model"] * 20 + ["fallback", "model"] * 3 + ["fallback"] * 10 + ["model"] * 9 + ["model"]
    for i, source in enumerate(stream):
        event = detector.feed({"seq": i, "source": source, "reason": "no_data" if source == "fallback" else None})
        if event:
            events.append(event)
    assert [e["state"] for e in events] == ["start", "end"]
    assert events[0]["fallbacks"] == 5 and events[0]["reasons"] == {"no_data": 5}
    assert events[1]["seq"] == len(stream) - 1 and events[1]["fallbacks"] == 13


def test_scattered_fallbacks_are_no_burst():
    detector = BurstDetector(window=10)
    assert not any(detector.feed({"source": "fallback" if i % 3 == 0 else "model", "reason": "deadline"})
                   for i in range(300))
