"""The MQTT sink's promise to the decision loop, as logic: ``on_decision`` never waits for the worker, not even
when the disk under the spool hangs; what it was handed is spooled in order once the disk answers."""

from __future__ import annotations

import json
import threading

from mqtt_helpers import free_port

from edge_infer.decide.decision import Decision
from edge_infer.fleet.broker import parse_broker_url
from edge_infer.sinks.mqtt import MqttOptions, MqttSink


def decision(seq: int) -> Decision:
    return Decision(seq=seq, t=seq / 10, action="a", source="model", reason=None, latency_us=1.0, invoke_us=1.0,
                    output=[1.0], label=None)


def test_on_decision_does_not_wait_for_a_hung_spool(tmp_path):
    options = MqttOptions(parse_broker_url(f"mqtt://127.0.0.1:{free_port()}"), "d1", tmp_path / "spool",
                          drain_timeout_s=0.5, batch_interval_s=0.01)
    sink = MqttSink(options, lambda: {"decisions": 1000}, {"name": "m", "sha256": "x"})
    disk = threading.Event()
    entered = threading.Event()
    append = sink.spool.append

    def hung_append(*args, **kwargs):
        entered.set()
        disk.wait()  # the SD card stops answering
        return append(*args, **kwargs)

    sink.spool.append = hung_append
    sink.on_decision(decision(0))
    assert entered.wait(10), "the worker never reached the spool"

    loop = threading.Thread(target=lambda: [sink.on_decision(decision(i)) for i in range(1, 1000)])
    loop.start()
    loop.join(30)
    assert not loop.is_alive(), "on_decision waited for the worker"
    assert not disk.is_set()  # all 999 were taken while the worker was stuck

    disk.set()
    sink.close()
    spooled = []
    from edge_infer.fleet.spool import Spool
    reopened = Spool(tmp_path / "spool", 1 << 20)
    while (record := reopened.next_unsent()) is not None:
        if record.topic == "decisions":
            spooled += [r["seq"] for r in json.loads(record.payload)["records"]]
    reopened.close()
    assert spooled == list(range(1000))
