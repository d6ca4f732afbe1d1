"""Signed model bundles: the spec and the model, signed together with Ed25519, verified before loading.

The spec's ``[model].sha256`` catches a model that drifted from its spec, but
not an attacker: whoever can write the folder can swap the model and fix the
hash. A bundle signature (``SPEC.sig`` beside the spec) binds the spec's
bytes, the model's bytes, the bundle's name and an integer version to a key
whose private half never leaves the release machine. A runtime given trusted
public keys (``--trusted-key``, config ``[trust].keys``) refuses an unsigned
bundle, a bad signature, a key it does not trust, and a spec or model whose
bytes are not the ones signed -- before the native interpreter parses a byte
of the model. The bytes verified are the bytes loaded
(:attr:`VerifiedBundle.model_bytes` is handed to the interpreter as
``model_content``), so a file swapped after the check is never run.

Why Ed25519 from ``cryptography``: small keys and signatures, deterministic
signing (no nonce to get wrong on a build machine), fast verification on a
Pi, and a maintained library with wheels for x86_64, aarch64 and armv7l.
Sigstore's ``model-signing`` signs whole directories through DSSE and
certificates; a board that may be offline and verifies one small bundle
needs a pinned key, not a transparency log (docs/security.md).

The signature file is one JSON object: ``format``, ``signed`` (name,
version, spec and model file names and sha256), ``key_id`` and
``signature`` (base64 of the Ed25519 signature over
``FORMAT + "\\n" + canonical JSON of signed``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import TrustError
from ..io.files import replace_atomically
from ..settings import values
from .engine import read_model_bytes, sha256_hex
from .spec import ModelSpec, load_spec

FORMAT = "edge-infer-bundle-signature-v1"
SIGNATURE_SUFFIX = ".sig"
#: Bundle versions: whole numbers, compared as integers (JSON keeps them exact up to 2**53).
VERSION = values.Number(minimum=0, maximum=2 ** 53, integer=True)
_SIGNED_FIELDS = ("name", "version", "spec_file", "spec_sha256", "model_file", "model_sha256", "signed_utc")


def _crypto() -> Any:
    """The ``cryptography`` primitives, or a one-line error saying how to get them (never unsigned instead)."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise TrustError("signed bundles need the 'cryptography' package: pip install cryptography "
                         "(or edge-infer[trust]; on a 32-bit Pi: apt install python3-cryptography and a venv "
                         "made with --system-site-packages)") from None
    return InvalidSignature, serialization, ed25519


@dataclass(frozen=True)
class TrustedKey:
    """A public key a runtime accepts bundles from; ``key_id`` names it in messages and signatures."""

    key_id: str
    path: Path
    key: Any  # cryptography's Ed25519PublicKey


@dataclass(frozen=True)
class BundleSignature:
    """What a valid signature vouches for (``signed`` in the .sig file), and by which key."""

    name: str
    version: int
    spec_sha256: str
    model_sha256: str
    key_id: str
    signed_utc: str = ""


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature checked out: the exact bytes verified, to load from (never re-read the files),
    and the spec parsed from them."""

    spec_path: Path
    spec_bytes: bytes
    model_bytes: bytes
    signature: BundleSignature
    spec: ModelSpec


def signature_path(spec_path: "str | Path") -> Path:
    """``model.toml`` -> ``model.toml.sig``."""
    spec_path = Path(spec_path)
    return spec_path.with_name(spec_path.name + SIGNATURE_SUFFIX)


def key_id_of(public_key: Any) -> str:
    """The first 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    _, serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --- keys -----------------------------------------------------------------------------------------------


def generate_keypair(prefix: "str | Path") -> Tuple[Path, Path, str]:
    """Write ``PREFIX.key`` (PKCS#8 PEM, mode 0600) and ``PREFIX.pub``; return both paths and the key id.

    Neither file is ever overwritten: a lost private key cannot sign the next release, and a replaced one
    makes every board that trusts the old key refuse it. Both names are checked before anything is written.
    """
    _, serialization, ed25519 = _crypto()
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if os.path.lexists(path):
            raise TrustError(f"{path} already exists; keygen never overwrites a key (choose another prefix)")
    private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(key_path, private_pem, 0o600)
    try:
        _write_new(pub_path, public_pem, 0o644)
    except BaseException:
        key_path.unlink()  # no half key pair: the prefix can be used again
        raise
    return key_path, pub_path, key_id_of(private.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (refusing an existing one, even a dangling link) with ``mode``, write, fsync."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    except FileExistsError:
        raise TrustError(f"{path} already exists; it is never overwritten") from None
    except OSError as exc:
        raise TrustError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any to the private key
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: "str | Path") -> Any:
    """An Ed25519 private key from a PEM file that only its owner can read (as ssh insists)."""
    _, serialization, ed25519 = _crypto()
    path = Path(path)
    data = _read(path, "private key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise TrustError(f"private key {path} can be read by others (mode {mode:04o}); chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TrustError(f"private key {path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TrustError(f"private key {path} is not an Ed25519 key (make one with 'edge-infer keygen')")
    return key


def load_trusted_key(path: "str | Path") -> TrustedKey:
    """A public key from a PEM file (``PREFIX.pub``)."""
    _, serialization, ed25519 = _crypto()
    path = Path(path)
    data = _read(path, "trusted key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        hint = " (that is a private key: give the .pub file)" if b"PRIVATE KEY" in data else ""
        raise TrustError(f"trusted key {path} is not a PEM public key{hint}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise TrustError(f"trusted key {path} is not an Ed25519 public key (make one with 'edge-infer keygen')")
    return TrustedKey(key_id=key_id_of(key), path=path, key=key)


def load_trusted_keys(paths: Sequence["str | Path"]) -> List[TrustedKey]:
    return [load_trusted_key(path) for path in paths]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TrustError(f"{what} {path} not found") from None
    except OSError as exc:
        raise TrustError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


# --- signing --------------------------------------------------------------------------------------------


def _message(signed: Dict[str, Any]) -> bytes:
    """The bytes the signature is over: the format name, then the signed fields as canonical JSON."""
    body = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return (FORMAT + "\n" + body).encode("ascii")


def bundle_name(spec: ModelSpec) -> str:
    """The name versions are counted under: the spec's [model].name, else the spec file's stem."""
    return spec.name or (spec.spec_path.stem if spec.spec_path else spec.model_path.stem)


def sign_bundle(spec_path: "str | Path", key_path: "str | Path", version: int, replace: bool = False) -> Path:
    """Sign the spec at ``spec_path`` and the model it names; write and return ``SPEC.sig``.

    The bundle must load (the spec is valid, its model a TFLite file, and its sha256 if given matches):
    signing what would be refused anyway only moves the failure onto the boards.
    """
    version = _checked_version(version)
    spec_path = Path(spec_path)
    out = signature_path(spec_path)
    if os.path.lexists(out) and not replace:
        raise TrustError(f"{out} already exists; pass --replace to sign the bundle again")
    private = load_private_key(key_path)
    spec_bytes = _read(spec_path, "spec")
    spec = load_spec(spec_path, data=spec_bytes)
    model_bytes = read_model_bytes(spec.model_path)
    spec.check_hash(sha256_hex(model_bytes))
    signed = {
        "name": bundle_name(spec),
        "version": version,
        "spec_file": spec_path.name,
        "spec_sha256": sha256_hex(spec_bytes),
        "model_file": spec.model_path.name,
        "model_sha256": sha256_hex(model_bytes),
        "signed_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    document = {
        "format": FORMAT,
        "signed": signed,
        "key_id": key_id_of(private.public_key()),
        "signature": base64.b64encode(private.sign(_message(signed))).decode("ascii"),
    }
    replace_atomically(out, (json.dumps(document, indent=1) + "\n").encode("utf-8"), "signature", 0o644)
    return out


def _checked_version(version: Any) -> int:
    try:
        return int(VERSION.check(version))
    except values.ValueProblem as exc:
        raise TrustError(f"--version {exc}") from None


# --- verifying ------------------------------------------------------------------------------------------


def verify_bundle(spec_path: "str | Path", trusted_keys: Sequence[Union[TrustedKey, str, Path]]) -> VerifiedBundle:
    """Check ``SPEC.sig`` against ``trusted_keys``, and the spec's and model's bytes against the signature.

    Raises :class:`~edge_infer.errors.TrustError` (one line, exit 2) for an unsigned bundle, a signature
    that does not verify, a key not trusted, or a spec or model whose bytes are not the ones signed. Each
    file is read once; load from the returned bytes (``open_model(..., bundle=...)``), never from the path
    again, so a file swapped after this check is not the one run. No native code sees the model here.
    """
    InvalidSignature = _crypto()[0]
    keys = [key if isinstance(key, TrustedKey) else load_trusted_key(key) for key in trusted_keys]
    if not keys:
        raise TrustError("verify_bundle needs at least one trusted key")
    spec_path = Path(spec_path)
    where = f"bundle {spec_path}"
    spec_bytes = _read(spec_path, "spec")
    document = _read_signature(signature_path(spec_path), where)
    signed, key_id = document["signed"], document["key_id"]
    key = next((k for k in keys if k.key_id == key_id), None)
    if key is None:
        trusted = ", ".join(f"{k.key_id} ({k.path})" for k in keys)
        raise TrustError(f"{where} is signed by key {key_id}, which is not trusted here (trusted: {trusted})")
    try:
        key.key.verify(base64.b64decode(document["signature"], validate=True), _message(signed))
    except (InvalidSignature, ValueError):
        raise TrustError(f"{where}: the signature does not verify with key {key_id}: the signature file was "
                         "altered or made with another key") from None
    if sha256_hex(spec_bytes) != signed["spec_sha256"]:
        raise TrustError(f"{where}: the spec is not the one signed (sha256 {sha256_hex(spec_bytes)[:16]}..., "
                         f"signed {signed['spec_sha256'][:16]}...)")
    spec = load_spec(spec_path, data=spec_bytes)
    model_bytes = read_model_bytes(spec.model_path)
    if sha256_hex(model_bytes) != signed["model_sha256"]:
        raise TrustError(f"{where}: model {spec.model_path.name} is not the one signed (sha256 "
                         f"{sha256_hex(model_bytes)[:16]}..., signed {signed['model_sha256'][:16]}...); "
                         "it was replaced after signing")
    signature = BundleSignature(name=signed["name"], version=signed["version"], spec_sha256=signed["spec_sha256"],
                                model_sha256=signed["model_sha256"], key_id=key_id,
                                signed_utc=str(signed.get("signed_utc", "")))
    return VerifiedBundle(spec_path=spec_path, spec_bytes=spec_bytes, model_bytes=model_bytes, signature=signature,
                          spec=spec)


def _read_signature(path: Path, where: str) -> Dict[str, Any]:
    """The signature document, its shape checked (its signature is checked by the caller)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrustError(f"{where} is not signed (no {path.name}); sign it with 'edge-infer sign', "
                         "or run without --trusted-key") from None
    except OSError as exc:
        raise TrustError(f"cannot read signature {path}: {exc.strerror or exc}") from None
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TrustError(f"{where}: signature {path.name} is not a signature file (not JSON)") from None
    signed = document.get("signed") if isinstance(document, dict) else None
    if (not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(signed, dict)
            or not all(isinstance(document.get(k), str) for k in ("key_id", "signature"))
            or not all(isinstance(signed.get(k), str) for k in _SIGNED_FIELDS if k != "version")
            or isinstance(signed.get("version"), bool) or not isinstance(signed.get("version"), int)):
        raise TrustError(f"{where}: signature {path.name} is not an {FORMAT} file")
    return document


def describe_signature(signature: Optional[BundleSignature]) -> str:
    """A short account for logs and summaries: 'signed by KEY, version N'."""
    if signature is None:
        return "unsigned"
    return f"signed by {signature.key_id}, version {signature.version}"
