"""The service config: validation naming every bad key, check-config's exit codes, flags winning over the file."""

import json
from pathlib import Path

import pytest
from conftest import ROOT, read_jsonl, run_cli
from service_model import make_service_model

from edge_infer.cli import build_parser
from edge_infer.errors import ConfigError
from edge_infer.service.config import DEFAULT_CONFIG, load_config


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_service_model(tmp_path_factory.mktemp("svc"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_good_config_gives_run_options_with_paths_relative_to_the_file(tmp_path):
    config = load_config(write(tmp_path / "c.toml", """
[model]
spec = "models/m.toml"
backend = "litert"
[input]
hop = 2
[deadline]
budget_ms = 15
mode = "process"
hang_limit_ms = 500
no_data_ms = 0
warmup = 0
[fallback]
action = 0
hold_ms = 300
[scheduling]
cpu_affinity = [3]
realtime = true
[recording]
path = "/var/lib/edge-infer/field.mcap"
max_mb = 64
[source]
uri = "serial:/dev/ttyACM0?baud=115200"
speed = "max"
[sinks]
decisions = "out/d.jsonl"
show = "none"
[metrics]
textfile = "/run/edge-infer/edge_infer.prom"
http = 9464
interval_s = 5
[logging]
level = "warning"
repeat_interval_s = 30
"""))
    assert config.options == {
        "model": str(tmp_path / "models" / "m.toml"), "backend": "litert", "hop": 2, "budget_ms": 15.0,
        "mode": "process", "hang_limit_ms": 500.0, "no_data_ms": 0.0, "warmup": 0, "strict_budget": True,
        "fallback": "0", "hold_ms": 300.0, "cpu_affinity": [3], "realtime": True,
        "record": "/var/lib/edge-infer/field.mcap", "record_max_mb": 64.0,
        "source": "serial:/dev/ttyACM0?baud=115200", "speed": None,
        "decisions": str(tmp_path / "out" / "d.jsonl"), "show": "none",
        "metrics_textfile": "/run/edge-infer/edge_infer.prom", "metrics_http": "9464", "metrics_interval": 5.0,
        "log_level": "warning", "log_repeat_interval": 30.0,
    }
    source = load_config(write(tmp_path / "log.toml", '[source]\nuri = "logs/field.csv"\n'))
    assert source.options["source"] == str(tmp_path / "logs" / "field.csv")
    assert source.options["strict_budget"] is True  # a service refuses a model that cannot keep its budget
    relaxed = load_config(write(tmp_path / "relaxed.toml", "[deadline]\nstrict_budget = false\n"))
    assert relaxed.options["strict_budget"] is False


BAD = """
[model]
spec = 3
colour = "red"
[input]
hop = 0
[deadline]
budget_ms = -1
[fallback]
action = true
[source]
uri = ""
speed = "fast"
strict = "yes"
[sinks]
show = "everything"
[metrics]
http = "localhost:99999"
interval_s = 0
[logging]
level = "loud"
[extras]
x = 1
"""
BAD_KEYS = ["[model].spec", "[model].colour", "[input].hop", "[deadline].budget_ms", "[fallback].action",
            "[source].uri", "[source].speed", "[source].strict", "[sinks].show", "[metrics].http",
            "[metrics].interval_s", "[logging].level", "[extras]"]


def test_every_bad_key_is_named_in_one_message(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path / "bad.toml", BAD))
    message = str(error.value)
    assert message.startswith(f"config {tmp_path / 'bad.toml'}: ")
    assert "\n" not in message
    for key in BAD_KEYS:
        assert key in message, key
    assert message.count(";") == len(BAD_KEYS) - 1


@pytest.mark.parametrize("text,fragment", [
    ("[model]\nspec = 3\n", "[model].spec must be a non-empty string, not 3"),
    ("[source]\nspeed = -2\n", '[source].speed must be "max" or a number at least 0.001 and at most 1000000, not -2'),
    ("[input]\nhop = 1.5\n", "[input].hop must be a whole number at least 1 and at most 100000000, not 1.5"),
    ("[sinks]\nshow = 'loud'\n", "[sinks].show must be one of changes, all, none, not 'loud'"),
    ("[metrics]\nhttp = 'nohost:port'\n", "[metrics].http is not a valid address"),
    ("[logging]\nlevel = 'trace'\n", "[logging].level must be one of debug, info, warning, error"),
    ("[metrics]\nfile = 'x'\n", "[metrics].file is not a known key (known: textfile, http, interval_s)"),
    ("model = 'x'\n", "[model] must be a table"),
    ("[checks]\n", "[checks] is not a known table"),  # input checks belong to the model spec
    ("[deadline]\nmode = 'fork'\n", "[deadline].mode must be one of inline, thread, process"),
    ("[scheduling]\ncpu_affinity = 3\n", "[scheduling].cpu_affinity must be a non-empty list of CPU numbers"),
    ("[deadline]\nwarmup = -1\n", "[deadline].warmup must be a whole number at least 0"),
    ("[source\n", "is not valid TOML"),
])
def test_each_problem_names_its_key(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(write(tmp_path / "c.toml", text))
    assert fragment in str(error.value)


def test_a_key_for_an_option_this_build_lacks_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\[deadline\].budget_ms is not supported by this version"):
        load_config(write(tmp_path / "c.toml", "[deadline]\nbudget_ms = 5\n"), supported=["model"])


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_config_option_without_a_path_means_the_default_file():
    assert build_parser().parse_args(["run", "--config"]).config == str(DEFAULT_CONFIG)
    assert build_parser().parse_args(["run"]).config is None


def test_check_config_valid_prints_one_line_and_exits_0(model, tmp_path):
    spec, log = model
    config = write(tmp_path / "c.toml", f'[model]\nspec = "{spec}"\n[source]\nuri = "{log}"\n'
                                        '[metrics]\ntextfile = "/run/edge-infer/edge_infer.prom"\n'
                                        '[fleet]\nmqtt = "mqtt://127.0.0.1:1"\ndevice_id = "pi-1"\n')
    proc = run_cli("check-config", str(config))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"config {config} is valid: ")
    assert "svc-test" in lines[0] and "budget 50 ms" in lines[0] and "mqtt mqtt://127.0.0.1:1" in lines[0]


@pytest.mark.parametrize("text,fragment", [
    (BAD, "[model].colour"),  # the bad keys
    ('[model]\nspec = "missing.toml"\n[source]\nuri = "serial:/dev/ttyACM0"\n', "missing.toml not found"),  # loaded
    ('[source]\nuri = "missing.csv"\n', "missing.csv"),  # a log source is read
    ("[deadline]\nbudget_ms = [1]\n", "[deadline].budget_ms must be a number"),
    # the fleet options as run checks them (run would refuse to start)
    ('[fleet]\nmqtt = "mqtt://127.0.0.1:1"\ndevice_id = "bad/id+#"\n', "device id 'bad/id+#'"),
    ('[fleet]\nmqtt = "mqtt://127.0.0.1:1"\npassword_file = "pw"\n', "--mqtt-password-file"),
])
def test_check_config_invalid_prints_one_line_and_exits_2(model, tmp_path, text, fragment):
    spec, _ = model
    if "[model]" not in text:
        text = f'[model]\nspec = "{spec}"\n' + text
    proc = run_cli("check-config", str(write(tmp_path / "c.toml", text)))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-infer: error: ") and fragment in lines[0], proc.stderr
    assert proc.stdout == ""


def test_check_config_catches_a_log_without_the_models_channels(model, tmp_path):
    spec, _ = model
    log = write(tmp_path / "other.csv", "t,x,y\n0,1,2\n0.1,1,2\n")
    config = write(tmp_path / "c.toml", f'[model]\nspec = "{spec}"\n[source]\nuri = "{log}"\n')
    proc = run_cli("check-config", str(config))
    assert proc.returncode == 2 and "has no column 'acc_x'" in proc.stderr


def test_the_shipped_config_template_is_valid():
    proc = run_cli("check-config", str(ROOT / "systemd" / "config.toml"))
    assert proc.returncode == 0, proc.stderr
    assert "source serial:/dev/ttyACM0" in proc.stdout


def test_run_takes_its_options_from_the_file_and_flags_win(model, tmp_path):
    spec, log = model
    config = write(tmp_path / "c.toml", f"""
[model]
spec = "{spec}"
[source]
uri = "{log}"
[deadline]
budget_ms = 40
[sinks]
decisions = "decisions.jsonl"
show = "all"
""")
    proc = run_cli("run", "--config", str(config), "--budget-ms", "45", "--show", "none", "--json", check=True)
    summary = json.loads(proc.stdout)  # --show none won over show = "all": stdout holds only the summary
    assert summary["budget_ms"] == 45.0  # the flag won over [deadline].budget_ms
    assert summary["model"] == "svc-test" and summary["frames"] == 400
    records = read_jsonl(tmp_path / "decisions.jsonl")  # from the file, relative to it
    assert len(records) == summary["decisions"] > 0


def test_the_fleet_table_keeps_credential_paths_for_systemd_and_resolves_the_rest(tmp_path):
    from edge_infer.service.config import parse_config

    config = parse_config(tmp_path / "config.toml", {"fleet": {
        "mqtt": "mqtts://broker", "device_id": "pi-1", "spool": "spool", "spool_max_mb": 8,
        "password_file": "${CREDENTIALS_DIRECTORY}/mqtt-password", "ca_file": "ca.pem", "username": "pi-1",
        "control_key_file": "/etc/edge-infer/secrets/control-key", "drain_timeout_s": 2}})
    opts = config.options
    assert opts["mqtt"] == "mqtts://broker" and opts["device_id"] == "pi-1" and opts["spool_max_mb"] == 8
    assert opts["spool"] == str(tmp_path / "spool") and opts["mqtt_ca"] == str(tmp_path / "ca.pem")
    assert opts["mqtt_password_file"] == "${CREDENTIALS_DIRECTORY}/mqtt-password"  # expanded when read
    assert opts["control_key_file"] == "/etc/edge-infer/secrets/control-key" and opts["mqtt_drain_timeout"] == 2
    with pytest.raises(ConfigError, match=r"\[fleet\]\.spool_max_mb must be a number greater than 0.*"
                                          r"\[fleet\]\.password is not a known key"):
        parse_config(tmp_path / "c.toml", {"fleet": {"spool_max_mb": 0, "password": "hunter2"}})
    with pytest.raises(ConfigError, match=r"\[fleet\]\.mqtt is not a broker URL: expected mqtt://HOST"):
        parse_config(tmp_path / "c.toml", {"fleet": {"mqtt": "tcp://broker:1883"}})
