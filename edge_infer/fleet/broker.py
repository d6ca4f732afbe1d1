"""The broker connection: ``mqtt[s]://HOST[:PORT]``, TLS with verification, credentials read from files.

One place for the security rules, shared by the MQTT sink and ``edge-infer fleet``:

* ``mqtts://`` verifies the broker's certificate against ``ca_file`` (or the system's CAs) and its host
  name; there is no option to turn verification off.
* A password or a private key never appears on a command line (``ps`` and the shell history show those):
  they are read from files, ``${CREDENTIALS_DIRECTORY}/...`` under systemd's ``LoadCredential=``.
* A password is refused over plain ``mqtt://`` to anything but this machine: anyone on the path would read it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple
from urllib.parse import urlsplit

from ..errors import ConfigError, EdgeInferError

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
INSTALL_HINT = "pip install 'edge-infer[fleet]' (paho-mqtt)"


@dataclass(frozen=True)
class BrokerUrl:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_broker_url(text: str) -> BrokerUrl:
    """``mqtt://HOST[:PORT]`` (1883) or ``mqtts://HOST[:PORT]`` (8883); no user or password in it."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--mqtt {text!r}: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"--mqtt {text!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if parts.username or parts.password:
        raise ConfigError(f"--mqtt {parts.scheme}://...@{parts.hostname}: no credentials in the URL (a command "
                          "line is readable by every user); use --mqtt-username and --mqtt-password-file")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"--mqtt {text!r}: expected mqtt[s]://HOST[:PORT], without a path or a query")
    return BrokerUrl(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme])


@dataclass(frozen=True)
class Credentials:
    """How this client proves who it is, and how it checks the broker (paths; secrets are read at connect)."""

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    username: Optional[str] = None
    password_file: Optional[str] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Credentials":
        return cls(args.mqtt_ca, args.mqtt_cert, args.mqtt_key, args.mqtt_username, args.mqtt_password_file)


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    """``--mqtt-ca``, ``--mqtt-cert``, ``--mqtt-key``, ``--mqtt-username``, ``--mqtt-password-file``."""
    parser.add_argument("--mqtt-ca", metavar="FILE", help="CA certificate(s) that signed the broker's "
                                                           "certificate (mqtts://; default: the system's CAs)")
    parser.add_argument("--mqtt-cert", metavar="FILE", help="client certificate (mqtts://), with --mqtt-key")
    parser.add_argument("--mqtt-key", metavar="FILE", help="the client certificate's private key")
    parser.add_argument("--mqtt-username", metavar="NAME", help="user name at the broker")
    parser.add_argument("--mqtt-password-file", metavar="FILE",
                        help="file holding the broker password (never on the command line)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_credentials(url: BrokerUrl, creds: Credentials) -> None:
    """Refuse combinations that would not do what the user thinks, before anything starts."""
    if not url.tls and (creds.ca_file or creds.cert_file or creds.key_file):
        raise ConfigError(f"--mqtt-ca/--mqtt-cert/--mqtt-key need a TLS broker URL (mqtts://{url.host}), "
                          f"not {url.scheme}://")
    if bool(creds.cert_file) != bool(creds.key_file):
        raise ConfigError("--mqtt-cert and --mqtt-key go together (a client certificate and its private key)")
    if creds.password_file and not creds.username:
        raise ConfigError("--mqtt-password-file needs --mqtt-username")
    if creds.password_file and not url.tls and not is_loopback(url.host):
        raise ConfigError(f"refusing to send a password over plain MQTT to {url.host}: anyone on the path could "
                          f"read it; use mqtts://{url.host} (TLS)")
    for option, path in (("--mqtt-ca", creds.ca_file), ("--mqtt-cert", creds.cert_file),
                         ("--mqtt-key", creds.key_file), ("--mqtt-password-file", creds.password_file)):
        if path:
            secret_path(path, option)


def secret_path(text: str, option: str) -> Path:
    """A readable file named by ``text`` (``$CREDENTIALS_DIRECTORY`` and other variables expanded)."""
    path = Path(os.path.expandvars(text)).expanduser()
    if "$" in str(path):
        raise ConfigError(f"{option} {text}: a variable in it is not set (is LoadCredential= in the unit?)")
    if not os.access(path, os.R_OK) or not path.is_file():
        raise ConfigError(f"{option} {path}: not a readable file")
    return path


def read_secret(text: str, option: str) -> bytes:
    """A secret file's contents without the trailing newline; a warning if other users may read it."""
    path = secret_path(text, option)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s is readable by other users (mode %o); chmod 600 it", option, path, mode & 0o777)
    data = path.read_bytes().rstrip(b"\r\n")
    if not data:
        raise ConfigError(f"{option} {path}: the file is empty")
    return data


def tls_context(creds: Credentials) -> ssl.SSLContext:
    """Verify the broker's certificate and host name; present a client certificate if one is given."""
    try:
        context = ssl.create_default_context(
            cafile=str(secret_path(creds.ca_file, "--mqtt-ca")) if creds.ca_file else None)
        if creds.cert_file and creds.key_file:
            context.load_cert_chain(str(secret_path(creds.cert_file, "--mqtt-cert")),
                                    str(secret_path(creds.key_file, "--mqtt-key")))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"TLS set-up failed: {exc}") from None
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def new_client(client_id: str, url: BrokerUrl, creds: Credentials,
               will: Optional[Tuple[str, bytes]] = None) -> Any:
    """A paho client set up for ``url``: TLS, credentials, a retained last will; not yet connected.

    Clean session: a command sent while the board was away must not be applied late, and what the board
    publishes is kept by the spool, not by the broker's session. Messages in flight when a connection
    drops are sent again by paho on the next one (QoS 1).
    """
    try:
        from paho.mqtt import client as mqtt
    except ImportError:
        raise EdgeInferError(f"MQTT needs paho-mqtt: {INSTALL_HINT}") from None
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                         protocol=mqtt.MQTTv311)
    if url.tls:
        client.tls_set_context(tls_context(creds))
    if creds.username:
        password = read_secret(creds.password_file, "--mqtt-password-file").decode() if creds.password_file else None
        client.username_pw_set(creds.username, password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(1, 30)
    return client


__all__ = ["BrokerUrl", "Credentials", "parse_broker_url", "add_broker_options", "check_credentials",
           "read_secret", "secret_path", "new_client", "INSTALL_HINT"]
