"""The service configuration: one TOML file that says what ``edge-infer run`` does on a board.

A service started by systemd has no one to type flags, and an operator
looking after a fleet wants one file per board that says which model, which
serial port, where decisions and metrics go. That file is
``/etc/edge-infer/config.toml`` (``run --config [PATH]``); every key stands
for a ``run`` option, and an option given on the command line wins over the
file. The whole file is validated before anything starts, and every problem
is reported at once, each naming its key, so a bad edit is caught by
``edge-infer check-config`` rather than by a service that restarts in a loop.
The schema is in README.md ("Service configuration") and docs/operations.md.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..deadline.options import MODES, OVERLOAD_POLICIES
from ..errors import ConfigError
from ..settings import values
from ..fleet.broker import parse_broker_url
from ..settings.toml_file import read_toml
from ..settings.values import ValueProblem
from ..sinks.console import SHOW_MODES
from .logs import LEVELS
from .metrics import parse_listen

DEFAULT_CONFIG = Path("/etc/edge-infer/config.toml")
#: "serial:/dev/ttyUSB0?baud=115200" — a source named by a scheme, not a file path.
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def is_source_uri(text: str) -> bool:
    """True for a source named by a scheme (``serial:...``), False for a recorded log's path."""
    return bool(_SCHEME.match(text))


#: One invalid value; collected, then reported together (the rule's message, without the key).
_Problem = ValueProblem


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Problem(f"must be a non-empty string, not {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Problem(f"must be true or false, not {value!r}")
    return value


def _rule(rule: values.Number) -> Callable[[Any], Any]:
    """A key checked by one of the shared rules (:mod:`edge_infer.settings.values`)."""
    return rule.check


def _strings(value: Any) -> List[str]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise _Problem(f"must be a non-empty list of non-empty strings, not {value!r}")
    return value


def _cpus(value: Any) -> List[int]:
    if not isinstance(value, list) or not value or \
            not all(isinstance(cpu, int) and not isinstance(cpu, bool) and cpu >= 0 for cpu in value):
        raise _Problem(f"must be a non-empty list of CPU numbers, not {value!r}")
    return value


def _action(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise _Problem(f"must be a label (string) or a class index (integer), not {value!r}")
    return str(value)


def _speed(value: Any) -> Optional[float]:
    if value == "max":
        return None
    try:
        return values.SPEED.check(value)
    except ValueProblem as exc:
        raise _Problem(f'must be "max" or {str(exc)[len("must be "):]}') from None


def _one_of(choices: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise _Problem(f"must be one of {', '.join(choices)}, not {value!r}")
        return value
    return check


def _broker_url(value: Any) -> str:
    text = _string(value)
    try:
        parse_broker_url(text)
    except ConfigError as exc:
        raise _Problem("is not a broker URL: " + str(exc).replace(f"--mqtt {text!r}: ", "")) from None
    return text


def _listen(value: Any) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else _string(value)
    try:
        parse_listen(text)
    except ConfigError as exc:
        raise _Problem(f"is not a valid address: {exc}") from None
    return text


#: How a value is checked, and whether it is a path, or a list of paths (resolved against the config file's
#: directory). A secret's path may start with a variable (``${CREDENTIALS_DIRECTORY}``), expanded when the file
#: is read.
_PATH, _PATHS, _SOURCE, _SECRET = "path", "paths", "source", "secret"


@dataclass(frozen=True)
class _Key:
    dest: str  # the ``run`` option's argparse dest
    check: Callable[[Any], Any]
    path: str = ""  # _PATH, _PATHS, _SOURCE or ""


#: [table] -> key -> the run option it sets. The tables that mirror the model spec ([input], [deadline],
#: [fallback]) override the spec's values, as --hop, --budget-ms and --fallback do.
SCHEMA: Dict[str, Dict[str, _Key]] = {
    "model": {"spec": _Key("model", _string, _PATH), "backend": _Key("backend", _string)},
    "input": {"hop": _Key("hop", _rule(values.count(1)))},
    "deadline": {"budget_ms": _Key("budget_ms", _rule(values.MILLISECONDS)),
                 "strict_budget": _Key("strict_budget", _boolean),
                 "mode": _Key("mode", _one_of(MODES)), "overload": _Key("overload", _one_of(OVERLOAD_POLICIES)),
                 "admission": _Key("admission", _boolean),
                 "hang_limit_ms": _Key("hang_limit_ms", _rule(values.MILLISECONDS)),
                 "no_data_ms": _Key("no_data_ms", _rule(values.MILLISECONDS_OR_ZERO)),
                 "warmup": _Key("warmup", _rule(values.WARMUP))},
    "fallback": {"action": _Key("fallback", _action), "hold_ms": _Key("hold_ms", _rule(values.MILLISECONDS))},
    "scheduling": {"cpu_affinity": _Key("cpu_affinity", _cpus), "realtime": _Key("realtime", _boolean)},
    "source": {"uri": _Key("source", _string, _SOURCE), "speed": _Key("speed", _speed),
               "strict": _Key("strict", _boolean), "link_key": _Key("link_key", _string, _SECRET)},
    "sinks": {"decisions": _Key("decisions", _string, _PATH), "show": _Key("show", _one_of(SHOW_MODES))},
    "recording": {"path": _Key("record", _string, _PATH), "max_mb": _Key("record_max_mb", _rule(values.MEGABYTES))},
    "metrics": {"textfile": _Key("metrics_textfile", _string, _PATH), "http": _Key("metrics_http", _listen),
                "interval_s": _Key("metrics_interval", _rule(values.SECONDS))},
    "logging": {"level": _Key("log_level", _one_of(LEVELS)),
                "repeat_interval_s": _Key("log_repeat_interval", _rule(values.SECONDS))},
    # signed bundles (docs/security.md): keys add to --trusted-key; the state dir keeps accepted versions
    "trust": {"keys": _Key("trusted_key", _strings, _PATHS), "state_dir": _Key("state_dir", _string, _PATH),
              "allow_downgrade": _Key("allow_downgrade", _boolean)},
    # docs/fleet.md. Secret files may be named by ${CREDENTIALS_DIRECTORY}/NAME (systemd's LoadCredential=).
    "fleet": {"mqtt": _Key("mqtt", _broker_url), "device_id": _Key("device_id", _string),
              "spool": _Key("spool", _string, _PATH), "spool_max_mb": _Key("spool_max_mb", _rule(values.MEGABYTES)),
              "ca_file": _Key("mqtt_ca", _string, _SECRET), "cert_file": _Key("mqtt_cert", _string, _SECRET),
              "key_file": _Key("mqtt_key", _string, _SECRET), "username": _Key("mqtt_username", _string),
              "password_file": _Key("mqtt_password_file", _string, _SECRET),
              "control_key_file": _Key("control_key_file", _string, _SECRET),
              "remote_recordings": _Key("remote_recordings", _string, _PATH),
              "summary_interval_s": _Key("mqtt_summary_interval", _rule(values.SECONDS)),
              "drain_timeout_s": _Key("mqtt_drain_timeout", _rule(values.SECONDS))},
}


#: The keys of a ``[[stream]]`` table (docs/streams.md): one stream of a many-stream service. ``source`` is
#: required; the others default to the file's [model], [deadline], [fallback], [input] and [sinks] values.
STREAM_KEYS: Dict[str, _Key] = {
    "name": _Key("name", _string), "source": _Key("source", _string, _SOURCE), "spec": _Key("spec", _string, _PATH),
    "budget_ms": _Key("budget_ms", _rule(values.MILLISECONDS)), "fallback": _Key("fallback", _action),
    "hop": _Key("hop", _rule(values.count(1))),
    "decisions": _Key("decisions", _string, _PATH),
}


def _streams(value: Any, base: Path, problems: List[str]) -> List[Dict[str, Any]]:
    """Validate the ``[[stream]]`` tables; problems are appended, each naming ``[[stream]] N`` and the key."""
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        problems.append("[[stream]] must be one or more tables ([[stream]] headers), not "
                        f"{type(value).__name__}")
        return []
    streams = []
    for number, table in enumerate(value, 1):
        where = f"[[stream]] {number}"
        entry: Dict[str, Any] = {}
        for key, raw in table.items():
            rule = STREAM_KEYS.get(key)
            if rule is None:
                problems.append(f"{where}: {key} is not a known key (known: {', '.join(STREAM_KEYS)})")
                continue
            try:
                checked = rule.check(raw)
            except _Problem as exc:
                problems.append(f"{where}: {key} {exc}")
                continue
            entry[key] = _resolve(checked, rule.path, base) if rule.path else checked
        if "source" not in table:
            problems.append(f"{where}: source is required (a log path or serial:PORT)")
        streams.append(entry)
    for key in ("name", "decisions"):
        values = [entry[key] for entry in streams if key in entry]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            problems.append(f"[[stream]] {key} must differ between streams: {', '.join(map(str, repeated))} "
                            "is given twice")
    return streams


@dataclass
class ServiceConfig:
    """A validated config file: the ``run`` options it sets (argparse dest -> value)."""

    path: Path
    options: Dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """A one-line account of what the service will do, for check-config and the start-up log."""
        opts = self.options
        parts = [f"model {opts.get('model', 'bundled')}"]
        if opts.get("streams"):
            parts.append(f"{len(opts['streams'])} streams (" + ", ".join(
                s.get("name") or s.get("source", "?") for s in opts["streams"]) + ")")
        else:
            parts.append(f"source {opts.get('source', 'bundled log')}")
        for dest, what in (("link_key", "link key"), ("decisions", "decisions"), ("record", "recording"),
                           ("mqtt", "mqtt"),
                           ("metrics_textfile", "metrics textfile"), ("metrics_http", "metrics http")):
            if dest in opts:
                parts.append(f"{what} {opts[dest]}")
        return ", ".join(parts)


def _resolve(text: Any, kind: str, base: Path) -> Any:
    """A path relative to the config file's directory (a service's working directory is /), or a source URI."""
    if kind == _PATHS:
        return [_resolve(item, _PATH, base) for item in text]
    if (kind == _SOURCE and is_source_uri(text)) or (kind == _SECRET and text.startswith("$")):
        return text
    path = Path(text).expanduser()
    return text if path.is_absolute() else str((base / path).resolve())


def parse_config(path: Path, doc: Dict[str, Any], supported: Optional[Sequence[str]] = None) -> ServiceConfig:
    """Validate a parsed TOML document. ``supported`` lists the option dests this build's ``run`` has.

    Every problem is collected, and all are raised together as one :class:`ConfigError`.
    """
    config = ServiceConfig(path=path)
    problems: List[str] = []
    for table_name, table in doc.items():
        if table_name == "stream":
            if supported is not None and "streams" not in supported:
                problems.append("[[stream]] is not supported by this version of edge-infer")
            else:
                config.options["streams"] = _streams(table, path.parent, problems)
            continue
        keys = SCHEMA.get(table_name)
        if keys is None:
            problems.append(f"[{table_name}] is not a known table (known: {', '.join(SCHEMA)}, [[stream]])")
            continue
        if not isinstance(table, dict):
            problems.append(f"[{table_name}] must be a table, not {table!r}")
            continue
        for key, value in table.items():
            rule = keys.get(key)
            name = f"[{table_name}].{key}"
            if rule is None:
                problems.append(f"{name} is not a known key (known: {', '.join(keys)})")
            elif supported is not None and rule.dest not in supported:
                problems.append(f"{name} is not supported by this version of edge-infer")
            else:
                try:
                    checked = rule.check(value)
                except _Problem as exc:
                    problems.append(f"{name} {exc}")
                    continue
                config.options[rule.dest] = _resolve(checked, rule.path, path.parent) if rule.path else checked
    if "streams" in config.options and "source" in config.options:
        problems.append("[source].uri and [[stream]] tables both name the source; with streams, give each its "
                        "source in its [[stream]] table")
    if problems:
        raise ConfigError(f"config {path}: " + "; ".join(problems))
    if supported is None or "strict_budget" in supported:
        # A service whose model cannot keep its budget on this board should fail at start, loudly, rather
        # than run for weeks on fallbacks: on unless the file says otherwise.
        config.options.setdefault("strict_budget", True)
    return config


def load_config(path: "str | Path", supported: Optional[Sequence[str]] = None) -> ServiceConfig:
    """Read and validate a config file; any problem is a :class:`ConfigError` naming the file and the key."""
    path = Path(path)
    doc = read_toml(path, "config", ConfigError,
                    "; check the path, or start from systemd/config.toml (see docs/operations.md)")
    return parse_config(path, doc, supported)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config [PATH]`` on a sub-command; :func:`apply_config` reads it after the first parse."""
    parser.add_argument("--config", nargs="?", const=str(DEFAULT_CONFIG), metavar="PATH",
                        help=f"read options from a service config file (default path {DEFAULT_CONFIG}); "
                             "options on the command line win over the file")
    parser.set_defaults(config_parser=parser)


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 argv: Optional[List[str]]) -> argparse.Namespace:
    """If ``--config`` was given, parse again with the file's values as defaults: explicit flags still win."""
    path = getattr(args, "config", None)
    if path is None:
        return args
    config = load_config(path, supported=list(vars(args)))
    args.config_parser.set_defaults(**config.options)
    args = parser.parse_args(argv)
    args.service_config = config
    return args
