"""Signed model bundles (issue 12, item 1): keygen, sign, and the runtime's refusals with a trusted key.

Real keys (cryptography's Ed25519), real models, the real command line: an unsigned bundle, a bad signature,
a key not trusted, and a model swapped with the hash in the spec fixed are each refused in one line, exit 2,
before the interpreter sees the model; a correctly signed bundle runs; an older version is refused by a
service that accepted a newer one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

import pytest
from conftest import BUNDLED_LOG, BUNDLED_SPEC, run_cli
from test_cli_errors import assert_one_line_error

from edge_infer.errors import TrustError
from edge_infer.model.loader import open_model, verify_model_bundle
from edge_infer.model.signing import generate_keypair, load_trusted_key, sign_bundle, verify_bundle
from edge_infer.service.versions import AcceptedVersions
from edge_infer.testing.tflite_builder import dense_model

SEGFAULTING_MODEL = Path(__file__).parent / "data" / "segfaulting_model.tflite"


@pytest.fixture
def bundle(tmp_path):
    """The bundled model copied into tmp_path, a release key and an untrusted key; signed as version 3."""
    spec = tmp_path / "basic_motions.toml"
    spec.write_bytes(BUNDLED_SPEC.read_bytes())
    (tmp_path / "basic_motions.tflite").write_bytes(BUNDLED_SPEC.with_suffix(".tflite").read_bytes())
    generate_keypair(tmp_path / "release")
    generate_keypair(tmp_path / "other")
    sign_bundle(spec, tmp_path / "release.key", 3)
    return spec


def replay(spec: Path, *keys: Path, extra=()):
    args = ["replay", str(BUNDLED_LOG), "--model", str(spec), "--json", *extra]
    for key in keys:
        args += ["--trusted-key", str(key)]
    return run_cli(*args)


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    proc = run_cli("keygen", str(tmp_path / "k"), check=True)
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert load_trusted_key(pub).key_id in proc.stdout
    before = key.read_bytes(), pub.read_bytes()
    assert_one_line_error(run_cli("keygen", str(tmp_path / "k")), "already exists", "never overwrites")
    assert (key.read_bytes(), pub.read_bytes()) == before
    pub.unlink()  # half a pair: still refused, and the private key is kept
    assert_one_line_error(run_cli("keygen", str(tmp_path / "k")), "k.key already exists")
    assert key.read_bytes() == before[0] and not pub.exists()


def test_a_correctly_signed_bundle_runs(bundle):
    signed = replay(bundle, bundle.parent / "release.pub")
    unsigned = run_cli("replay", str(BUNDLED_LOG), "--model", str(BUNDLED_SPEC), "--json", check=True)
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout)["decisions"] == json.loads(unsigned.stdout)["decisions"] > 0


def test_an_unsigned_bundle_is_refused(bundle):
    signature = bundle.with_name(bundle.name + ".sig")
    signature.unlink()
    assert_one_line_error(replay(bundle, bundle.parent / "release.pub"), "is not signed", ".toml.sig")


def test_a_bundle_signed_by_a_key_not_trusted_is_refused(bundle):
    proc = replay(bundle, bundle.parent / "other.pub")
    assert_one_line_error(proc, "which is not trusted here", load_trusted_key(bundle.parent / "release.pub").key_id)


def test_either_of_two_trusted_keys_is_enough(bundle):
    assert replay(bundle, bundle.parent / "other.pub", bundle.parent / "release.pub").returncode == 0


def test_a_model_swapped_with_the_hash_in_the_spec_fixed_is_refused(bundle):
    """What the spec's sha256 alone cannot catch: whoever can write the folder fixes the hash too."""
    swapped = dense_model(32, 6, 4, dtype="int8", seed=7)
    (bundle.parent / "basic_motions.tflite").write_bytes(swapped)
    text = re.sub(r'sha256 = "[0-9a-f]{64}"', f'sha256 = "{hashlib.sha256(swapped).hexdigest()}"',
                  bundle.read_text())
    bundle.write_text(text)
    assert_one_line_error(replay(bundle, bundle.parent / "release.pub"), "the spec is not the one signed")
    bundle.write_bytes(BUNDLED_SPEC.read_bytes())  # the spec as signed, the model swapped
    assert_one_line_error(replay(bundle, bundle.parent / "release.pub"), "is not the one signed",
                          "replaced after signing")


@pytest.mark.parametrize("edit", [
    lambda doc: doc["signed"].update(version=99),
    lambda doc: doc["signed"].update(model_sha256="0" * 64),
    lambda doc: doc.update(signature=doc["signature"][:-4] + "AAA="),
])
def test_an_altered_signature_file_is_refused(bundle, edit):
    path = bundle.with_name(bundle.name + ".sig")
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    assert_one_line_error(replay(bundle, bundle.parent / "release.pub"), "the signature does not verify")


def test_a_signature_file_that_is_not_one_is_refused(bundle):
    bundle.with_name(bundle.name + ".sig").write_text("not json")
    assert_one_line_error(replay(bundle, bundle.parent / "release.pub"), "is not a signature file")


def test_the_refusal_comes_before_the_interpreter_sees_the_model(bundle):
    """A model that crashes LiteRT (found by the fuzzer): with an untrusted signature the message is the
    trust refusal, not the load probe's crash report, because the interpreter never gets the bytes."""
    (bundle.parent / "basic_motions.tflite").write_bytes(SEGFAULTING_MODEL.read_bytes())
    bundle.write_text(re.sub(r'sha256 = "[0-9a-f]{64}"\n', "", bundle.read_text()))
    sign_bundle(bundle, bundle.parent / "other.key", 1, replace=True)
    proc = replay(bundle, bundle.parent / "release.pub")
    assert_one_line_error(proc, "which is not trusted here")
    assert "crash" not in proc.stderr


def test_a_bare_model_cannot_be_run_with_trusted_keys(bundle):
    proc = run_cli("replay", str(BUNDLED_LOG), "--model", str(bundle.with_suffix(".tflite")),
                   "--trusted-key", str(bundle.parent / "release.pub"))
    assert_one_line_error(proc, "is a bare model, which cannot be signed")


def test_the_verified_bytes_are_the_ones_loaded(bundle):
    """A model swapped after the check (a TOCTOU race) is not the one run: the engine gets the verified bytes."""
    verified = verify_model_bundle(str(bundle), [bundle.parent / "release.pub"])
    (bundle.parent / "basic_motions.tflite").write_bytes(dense_model(32, 6, 4, dtype="int8", seed=7))
    bundle.write_text("garbage that is not TOML [")
    spec, engine = open_model(str(bundle), bundle=verified)
    assert engine.sha256 == verified.signature.model_sha256 == hashlib.sha256(verified.model_bytes).hexdigest()
    assert spec.name == "basic-motions-cnn"
    with pytest.raises(TrustError):
        open_model(str(bundle), trusted_keys=[bundle.parent / "release.pub"])


def test_sign_refuses_a_key_others_can_read_and_a_bundle_that_would_not_load(bundle):
    key = bundle.parent / "release.key"
    os.chmod(key, 0o644)
    assert_one_line_error(run_cli("sign", str(bundle), "--key", str(key), "--replace"), "chmod 600")
    os.chmod(key, 0o600)
    (bundle.parent / "basic_motions.tflite").write_bytes(dense_model(32, 6, 4, dtype="int8", seed=7))
    assert_one_line_error(run_cli("sign", str(bundle), "--key", str(key), "--replace"), "sha256")


def test_sign_refuses_to_overwrite_a_signature_unless_told(bundle):
    signature = bundle.with_name(bundle.name + ".sig")
    before = signature.read_bytes()
    assert_one_line_error(run_cli("sign", str(bundle), "--key", str(bundle.parent / "release.key")),
                          "already exists", "--replace")
    assert signature.read_bytes() == before
    proc = run_cli("sign", str(bundle), "--key", str(bundle.parent / "release.key"), "--version", "4", "--replace")
    assert proc.returncode == 0 and "version 4" in proc.stdout
    assert verify_bundle(bundle, [bundle.parent / "release.pub"]).signature.version == 4


def test_run_refuses_an_older_version_than_it_accepted(bundle, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    key = bundle.parent / "release.pub"

    def run(*extra):
        return run_cli("run", "--source", str(BUNDLED_LOG), "--model", str(bundle), "--trusted-key", str(key),
                       "--state-dir", str(state), "--json", "--show", "none", "--duration", "2", *extra)

    assert run().returncode == 0
    assert AcceptedVersions(state).highest("basic-motions-cnn") == 3
    sign_bundle(bundle, bundle.parent / "release.key", 2, replace=True)
    proc = run()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "version 2 is older than version 3" in proc.stderr.splitlines()[-1]
    assert run("--allow-downgrade").returncode == 0  # once: 2 is the new floor
    assert AcceptedVersions(state).highest("basic-motions-cnn") == 2
    assert run().returncode == 0


def test_the_service_config_trust_table_and_check_config(bundle, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    AcceptedVersions(state).record(verify_bundle(bundle, [bundle.parent / "release.pub"]).signature)
    config = tmp_path / "config.toml"
    body = f'[model]\nspec = "{bundle.name}"\n[source]\nuri = "{BUNDLED_LOG}"\n[trust]\nstate_dir = "state"\n'
    config.write_text(body + 'keys = ["other.pub"]\n')
    assert_one_line_error(run_cli("check-config", str(config)), "which is not trusted here")
    config.write_text(body + 'keys = ["release.pub"]\n')
    assert run_cli("check-config", str(config)).returncode == 0
    sign_bundle(bundle, bundle.parent / "release.key", 1, replace=True)
    assert_one_line_error(run_cli("check-config", str(config)), "version 1 is older than version 3")
    config.write_text(body + 'keys = "release.pub"\n')
    assert_one_line_error(run_cli("check-config", str(config)), "[trust].keys must be a non-empty list")


def test_a_missing_state_directory_is_an_error_not_a_silent_skip(bundle, tmp_path):
    proc = run_cli("run", "--model", str(bundle), "--trusted-key", str(bundle.parent / "release.pub"),
                   "--state-dir", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "state directory" in proc.stderr.splitlines()[-1]


def test_a_damaged_state_file_is_an_error_not_a_reset(bundle, tmp_path):
    (tmp_path / "accepted-bundles.json").write_text("{")
    with pytest.raises(TrustError, match="delete it"):
        AcceptedVersions(tmp_path).check(verify_bundle(bundle, [bundle.parent / "release.pub"]).signature)


def test_the_baseline_of_a_replay_must_be_signed_too(bundle, tmp_path):
    other = tmp_path / "b"
    other.mkdir()
    (other / "basic_motions.toml").write_bytes(BUNDLED_SPEC.read_bytes())
    (other / "basic_motions.tflite").write_bytes(BUNDLED_SPEC.with_suffix(".tflite").read_bytes())
    proc = replay(bundle, bundle.parent / "release.pub", extra=("--baseline", str(other / "basic_motions.toml")))
    assert_one_line_error(proc, "is not signed")


def test_run_keeps_versions_in_systemds_state_directory_by_default(bundle, tmp_path):
    """StateDirectory=edge-infer edge-infer/recordings sets $STATE_DIRECTORY to both, colon-separated."""
    state, recordings = tmp_path / "state", tmp_path / "state" / "recordings"
    recordings.mkdir(parents=True)
    proc = run_cli("run", "--model", str(bundle), "--trusted-key", str(bundle.parent / "release.pub"),
                   "--duration", "1", "--show", "none", env={"STATE_DIRECTORY": f"{state}:{recordings}"})
    assert proc.returncode == 0, proc.stderr
    assert AcceptedVersions(state).highest("basic-motions-cnn") == 3
    assert not (recordings / "accepted-bundles.json").exists()


def test_eval_takes_trusted_keys_like_replay(bundle):
    """eval loads the bundle in every worker: a swapped model is refused before any log is read."""
    args = ["eval", str(BUNDLED_LOG), "--model", str(bundle), "--json"]
    signed = run_cli(*args, "--trusted-key", str(bundle.parent / "release.pub"))
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout)["decisions"] > 0
    assert_one_line_error(run_cli(*args, "--trusted-key", str(bundle.parent / "other.pub")), "which is not trusted here")
    model = bundle.with_suffix(".tflite")
    model.write_bytes(dense_model(window=100, channels=6, outputs=4, dtype="int8"))  # swapped: refused
    assert_one_line_error(run_cli(*args, "--trusted-key", str(bundle.parent / "release.pub")))
