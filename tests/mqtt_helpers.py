"""A real Mosquitto for the fleet tests (started on a free port with a generated config), a subscriber that
collects what arrives, and a test CA for TLS (made with ``cryptography``)."""

from __future__ import annotations

import datetime
import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from paho.mqtt import client as mqtt

# Not skipped when missing: .ci/run installs it, and a fleet nobody tested against a broker must not pass.
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """One Mosquitto process on 127.0.0.1:``port`` with persistence (a subscriber's session survives a restart).

    ``tls``: (ca, cert, key) paths for a TLS listener; ``require_cert``: clients must present a certificate
    signed by that CA; ``users``: name -> password (a generated password file; anonymous refused).
    """

    def __init__(self, directory: Path, tls: Optional[Tuple[Path, Path, Path]] = None, require_cert: bool = False,
                 users: Optional[Dict[str, str]] = None):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = directory / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {directory}/",
                 "autosave_interval 1", f"log_dest file {self.log}", "log_type all", "max_queued_messages 0"]
        if os.geteuid() == 0:  # as root, mosquitto drops to user "mosquitto", which cannot read the test's files
            lines.append(f"user {pwd.getpwuid(0).pw_name}")
        if tls is not None:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
            if require_cert:
                lines += ["require_certificate true"]
        if users:
            passwords = directory / "passwords"
            passwords.write_text("")
            for name, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), name, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines += ["allow_anonymous true"]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "Broker":
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.process.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 15 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Collector:
    """Subscribes to ``edge-infer/#`` (QoS 1, a persistent session) and keeps every message that arrives."""

    def __init__(self, port: int, host: str = "127.0.0.1", tls_ca: Optional[Path] = None,
                 client_cert: Optional[Tuple[Path, Path]] = None, auth: Optional[Tuple[str, str]] = None):
        self.messages: List[Tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca), certfile=client_cert and str(client_cert[0]),
                                keyfile=client_cert and str(client_cert[1]))
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edge-infer/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect_async(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(15), "the test subscriber could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, device: str, kind: str) -> List[bytes]:
        with self._lock:
            return [payload for topic, payload, _ in self.messages if topic == f"edge-infer/{device}/{kind}"]

    def bodies(self, device: str, kind: str) -> List[dict]:
        """JSON payloads on a topic, each once (a message sent twice after a reconnect has the same run and n)."""
        seen, out = set(), []
        for payload in self.on(device, kind):
            body = json.loads(payload)
            key = (body["run"], body["n"])
            if key not in seen:
                seen.add(key)
                out.append(body)
        return out

    def decision_records(self, device: str) -> List[dict]:
        return [record for body in self.bodies(device, "decisions") for record in body["records"]]

    def events(self, device: str) -> List[dict]:
        return self.bodies(device, "events")

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


def make_ca(directory: Path, name: str = "edge-infer test CA") -> Tuple[Path, object, object]:
    """A self-signed CA: (its PEM path, certificate, private key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name.replace(' ', '_')}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def issue(directory: Path, ca: Tuple[Path, object, object], common_name: str, server: bool) -> Tuple[Path, Path]:
    """A certificate signed by ``ca`` (a server's for localhost and 127.0.0.1, or a client's): (cert, key) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    _, ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{common_name}.crt", directory / f"{common_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
