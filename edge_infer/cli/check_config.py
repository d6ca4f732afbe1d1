"""``edge-infer check-config [PATH]``: validate a service config without running anything.

Run it after editing ``/etc/edge-infer/config.toml`` and before
``systemctl restart edge-infer``: a service that fails at start is restarted
by systemd until its start limit, and the reason is in the journal; this says
it at once, on one line, naming the key. It checks what the service would
check at start, short of opening the source: every key and value, the model
and its spec (loaded with the interpreter, checked against each other), and
a recorded log's columns. A serial device is not opened (it may be unplugged
while you edit); the service waits for it.
"""

from __future__ import annotations

import argparse
import os
import sys

from firmware_bridge.keys import load_key

from ..deadline.options import runtime_options
from ..errors import ConfigError
from ..io import read_log
from ..model.loader import bundled_log
from ..service.config import DEFAULT_CONFIG, is_source_uri, load_config
from ..service.metrics import HttpExporter
from ..sources import parse_source_uri
from ..sources.log_replay import channel_columns
from ..fleet import topics
from ..fleet.broker import parse_broker_url
from . import run
from .fleet import mqtt_options
from .streams import refuse_for_streams
from .common import open_model_for


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("check-config", help="validate a service config file without running",
                            description="Validate a service config file (keys, values, the model and its spec, "
                                        "a log source's columns) and print one line: what the service would run, "
                                        "or what is wrong. Exit code 0 if valid, 2 if not.")
    parser.add_argument("path", nargs="?", default=str(DEFAULT_CONFIG),
                        help=f"the config file (default: {DEFAULT_CONFIG})")
    parser.set_defaults(handler=main)


def _run_defaults() -> "dict[str, object]":
    """``run``'s options in this build, with their defaults (a config key for an option it lacks is an error)."""
    parser = argparse.ArgumentParser()
    run.add_parser(parser.add_subparsers())
    return vars(parser.parse_args(["run"]))


def _run_options() -> "list[str]":
    return list(_run_defaults())


#: Where systemd puts the service's credentials (systemd/drop-ins/link-key.conf): only the service sees them.
CREDENTIALS = "/run/credentials/"


def _check_link_key(path: str) -> str:
    """Check the key file as the service will; a systemd credential only exists inside the service."""
    path = os.path.expandvars(path)
    if (path.startswith(CREDENTIALS) or "$" in path) and not os.path.exists(path):
        return (f"; link key {path} is a systemd credential, checked when the service starts (check its source "
                "file with: python -m firmware_bridge.keys check /etc/edge-infer/link.key)")
    load_key(path)
    return ""


#: The [fleet] options that name secret files (``${CREDENTIALS_DIRECTORY}/...`` under systemd).
FLEET_SECRETS = ("mqtt_ca", "mqtt_cert", "mqtt_key", "mqtt_password_file", "control_key_file")


def _check_fleet(run_args: argparse.Namespace) -> str:
    """The [fleet] options as run checks them; secrets in systemd's credential directory exist only inside
    the service, so then only the broker URL and the device id are checked here."""
    unset = [key for key in FLEET_SECRETS
             if getattr(run_args, key, None) and "$" in os.path.expandvars(getattr(run_args, key))]
    if not unset:
        mqtt_options(run_args)
        return ""
    parse_broker_url(run_args.mqtt)
    try:
        topics.check_device_id(run_args.device_id or "edge-infer")
    except ValueError as exc:
        raise ConfigError(f"[fleet].device_id: {exc}") from None
    return "; fleet secrets in $CREDENTIALS_DIRECTORY are checked when the service starts"


def main(args: argparse.Namespace) -> int:
    config = load_config(args.path, supported=_run_options())
    options = config.options
    key_note = ""
    if options.get("link_key"):  # what the service would refuse at start: a key for a log, a bad key file
        sources = [s.get("source") for s in options.get("streams") or []] or [options.get("source")]
        if not any(text and is_source_uri(text) for text in sources):
            raise ConfigError(f"config {config.path}: [source].link_key signs a serial link, but no source is one; "
                              "remove link_key or set [source].uri = \"serial:...\"")
        key_note = _check_link_key(options["link_key"])
    # every stream as the service would open it, short of a serial device: its model and spec (with [trust]
    # keys: its signature, and with a state dir its version), the spec's [deadline] and [fallback] tables under
    # the config's overrides, its log's columns
    for stream in options.get("streams") or [{}]:
        source = stream.get("source") or options.get("source") or str(bundled_log())
        if is_source_uri(source):
            parse_source_uri(source)  # a bad URI is an error now, not when the service opens it
        log = None if is_source_uri(source) else read_log(source, strict=options.get("strict", False))
        overrides = {"model": stream.get("spec"), "hop": stream.get("hop"), "budget_ms": stream.get("budget_ms"),
                     "fallback": stream.get("fallback")}
        run_args = argparse.Namespace(**{**_run_defaults(), **options,  # as run has them: --spool-max-mb's 64
                                         **{key: value for key, value in overrides.items() if value is not None}})
        spec, engine = open_model_for(run_args, log.channels if log is not None else None, record_version=False)
        runtime_options(spec, run_args)
        if log is not None:
            channel_columns(log, spec.channels if spec.spec_path is not None else None, engine.channels, source)
    if options.get("streams"):
        refuse_for_streams(run_args)  # what run refuses with several streams, refused here too
    fleet_note = _check_fleet(run_args) if options.get("mqtt") else ""
    if options.get("metrics_http"):
        HttpExporter(options["metrics_http"])
    print(f"config {config.path} is valid: {config.describe()}; model {spec.name or spec.model_path.name} "
          f"on {engine.backend.name}, budget {spec.budget_ms:g} ms, fallback {spec.fallback_action!r}{key_note}{fleet_note}",
          file=sys.stdout)
    return 0
