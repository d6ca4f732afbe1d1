"""Every bad number and file of issue 12 gets one line and exit 2 (or, for Excel's CSV, just works).

The numbers are checked by one set of rules (edge_infer/settings/values.py) wherever they come from: a flag,
a spec, a service config; ``check-config`` refuses what ``run`` would refuse.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import BUNDLED_LOG, BUNDLED_SPEC, run_cli
from test_cli_errors import assert_one_line_error

from edge_infer.io import iter_log, read_log
from edge_infer.settings import values


@pytest.mark.parametrize("option,value", [
    ("--budget-ms", "inf"), ("--budget-ms", "1e308"), ("--budget-ms", "nan"), ("--budget-ms", "-inf"),
    ("--hang-limit-ms", "inf"), ("--hold-ms", "inf"), ("--no-data-ms", "inf"), ("--no-data-ms", "nan"),
    ("--duration", "inf"), ("--speed", "inf"), ("--speed", "1e-300"), ("--record-max-mb", "inf"),
    ("--warmup", "1e9"), ("--hop", "0"),
])
def test_a_bad_number_on_the_command_line_is_one_line(option, value):
    assert_one_line_error(run_cli("run", f"{option}={value}"), f"argument {option}: must be")


@pytest.mark.parametrize("table,key,value", [
    ("deadline", "budget_ms", "inf"), ("deadline", "budget_ms", "1e308"), ("deadline", "budget_ms", "nan"),
    ("deadline", "hang_limit_ms", "inf"), ("deadline", "no_data_ms", "inf"), ("deadline", "reserve_ms", "inf"),
    ("input", "sample_rate_hz", "inf"), ("input", "offset", "[inf, 0, 0, 0, 0, 0]"),
])
def test_a_bad_number_in_a_spec_is_one_line_naming_the_key(tmp_path, table, key, value):
    lines = [line for line in BUNDLED_SPEC.read_text().splitlines() if not line.startswith(f"{key} =")]
    lines.insert(lines.index(f"[{table}]") + 1, f"{key} = {value}")
    text = "\n".join(lines) + "\n"
    spec = tmp_path / "basic_motions.toml"
    spec.write_text(text)
    (tmp_path / "basic_motions.tflite").write_bytes(BUNDLED_SPEC.with_suffix(".tflite").read_bytes())
    assert_one_line_error(run_cli("run", "--model", str(spec)), f"[{table}].{key}")


def test_hold_ms_inf_in_a_spec_is_one_line(tmp_path):
    text = BUNDLED_SPEC.read_text().replace('action = "idle"\n',
                                            'action = "idle"\nstrategy = "hold_last"\nhold_ms = inf\n')
    spec = tmp_path / "basic_motions.toml"
    spec.write_text(text)
    (tmp_path / "basic_motions.tflite").write_bytes(BUNDLED_SPEC.with_suffix(".tflite").read_bytes())
    assert_one_line_error(run_cli("run", "--model", str(spec)), "[fallback].hold_ms must be")


@pytest.mark.parametrize("body,key", [
    ("[deadline]\nbudget_ms = inf\n", "[deadline].budget_ms"),
    ("[deadline]\nhang_limit_ms = 1e308\n", "[deadline].hang_limit_ms"),
    ("[fallback]\nhold_ms = inf\n", "[fallback].hold_ms"),
    ("[metrics]\ninterval_s = inf\n", "[metrics].interval_s"),
])
def test_check_config_rejects_what_run_would_reject(tmp_path, body, key):
    config = tmp_path / "config.toml"
    config.write_text(body)
    for args in (("check-config", str(config)), ("run", "--config", str(config))):
        assert_one_line_error(run_cli(*args), key, "must be")


def test_check_config_rejects_a_spec_that_run_would_reject(tmp_path):
    """The spec's [deadline] options are built at start, not at load: check-config builds them too."""
    spec = tmp_path / "basic_motions.toml"
    spec.write_text(BUNDLED_SPEC.read_text().replace("budget_ms = 20.0\n", "budget_ms = 20.0\nmode = \"nope\"\n"))
    (tmp_path / "basic_motions.tflite").write_bytes(BUNDLED_SPEC.with_suffix(".tflite").read_bytes())
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nspec = "{spec}"\n')
    assert_one_line_error(run_cli("check-config", str(config)), "[deadline].mode must be one of")
    proc = run_cli("run", "--config", str(config))  # the service logs what it runs first, then the error
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("edge-infer: error: ") and "[deadline].mode" in proc.stderr


def test_an_excel_csv_with_a_bom_and_crlf_replays(tmp_path):
    """Excel's "CSV UTF-8": a byte-order mark before the header and CRLF line ends; read as the plain file is."""
    lines = BUNDLED_LOG.read_text().splitlines()[:200]
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode("utf-8"))
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(lines) + "\n")
    got, want = read_log(excel, strict=True), read_log(plain, strict=True)
    assert got.channels == want.channels and got.labels == want.labels and not got.bad_rows
    assert np.array_equal(got.t, want.t) and np.array_equal(got.values, want.values)
    chunks = list(iter_log(excel, strict=True, chunk_rows=64))  # eval's reader, in bounded memory: the same
    assert all(chunk.channels == want.channels for chunk in chunks)
    assert np.array_equal(np.concatenate([chunk.t for chunk in chunks]), want.t)
    summary = json.loads(run_cli("replay", str(excel), "--json", check=True).stdout)
    assert summary["frames"] == 199 and summary["source"]["bad_rows"] == 0 and summary["decisions"] > 0


def test_a_bare_baseline_against_a_spec_is_refused_before_the_replay():
    proc = run_cli("replay", str(BUNDLED_LOG), "--baseline", str(BUNDLED_SPEC.with_suffix(".tflite")))
    assert_one_line_error(proc, "is a bare model", "every window would disagree")


def test_bench_threads_zero_names_threads():
    proc = run_cli("bench", "--threads", "0")
    assert_one_line_error(proc, "argument --threads: must be a whole number at least 1")
    assert "model" not in proc.stderr


def test_replay_of_a_directory_says_so(tmp_path):
    assert_one_line_error(run_cli("replay", str(tmp_path)), "is a directory", "edge-infer eval")


def test_edge_infer_models_that_does_not_exist_is_named(tmp_path):
    proc = run_cli("run", env={"EDGE_INFER_MODELS": str(tmp_path / "nonexistent")})
    assert_one_line_error(proc, "EDGE_INFER_MODELS=", "does not exist")
    proc = run_cli("run", env={"EDGE_INFER_MODELS": str(tmp_path)})
    assert_one_line_error(proc, "EDGE_INFER_MODELS=", "has no basic_motions/basic_motions.toml")


@pytest.mark.parametrize("rule,good,bad", [
    (values.MILLISECONDS, [0.001, 20, 86_400_000], [0, -1, float("inf"), float("nan"), 1e308, True, "20", None]),
    (values.MILLISECONDS_OR_ZERO, [0, 0.5], [-0.1, float("inf")]),
    (values.FRACTION, [0, 0.5, 1], [1.0001, -0.1, float("nan")]),
    (values.count(1, 10), [1, 10], [0, 11, 1.0, 2.5, False]),
    (values.Number(above=0.0, below=1.0), [0.5], [0, 1]),
])
def test_the_rules_take_good_values_and_name_the_bad(rule, good, bad):
    for value in good:
        assert rule.check(value) == value
    for value in bad:
        with pytest.raises(values.ValueProblem, match="^must be " + re.escape(rule.describe())):
            rule.check(value)


def test_ms_to_ns_refuses_what_would_overflow():
    assert values.ms_to_ns(20) == 20_000_000
    for bad in (float("inf"), float("nan"), 1e308, -1):
        with pytest.raises(values.ValueProblem):
            values.ms_to_ns(bad)
