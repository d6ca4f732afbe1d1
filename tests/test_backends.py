"""Backends: choice, errors, and the same decisions from LiteRT and from tflite-runtime.

tflite-runtime is frozen at 2.14 and needs numpy<2, so it cannot share this
environment (numpy 2): the test builds its own virtualenv once (under
.cache/, reused across runs) and runs the real CLI there.
"""

import json
import os
import subprocess
import sys
import venv

import pytest
from conftest import BUNDLED_LOG, BUNDLED_SPEC, ROOT, read_jsonl, run_cli

from edge_infer.errors import BackendError
from edge_infer.model.backends import BACKENDS, available_backends, resolve_backend

TFLITE_VENV = ROOT / ".cache" / "venv-tflite-runtime"


def test_litert_is_preferred_when_installed():
    assert available_backends()[0] == "litert"
    backend, interpreter_class = resolve_backend()
    assert backend.name == "litert" and interpreter_class.__name__ == "Interpreter"


def test_unknown_and_unusable_backends_are_clear_errors():
    with pytest.raises(BackendError, match="unknown backend 'onnx'; choose one of: litert, tflite-runtime"):
        resolve_backend("onnx")
    if "tflite-runtime" not in available_backends():  # numpy 2 here: it must explain, not crash
        with pytest.raises(BackendError, match="tflite-runtime needs numpy<2"):
            resolve_backend("tflite-runtime")
    assert list(BACKENDS) == ["litert", "tflite-runtime", "tensorflow"]


@pytest.fixture(scope="session")
def tflite_runtime_python():
    """A virtualenv with tflite-runtime and numpy<2 (made once, reused)."""
    python = TFLITE_VENV / "bin" / "python"
    probe = [str(python), "-c", "import tflite_runtime.interpreter, serial, numpy; assert numpy.__version__ < '2'"]
    if not python.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        venv.EnvBuilder(with_pip=True, clear=True).create(TFLITE_VENV)
        install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                   "tflite-runtime", "numpy<2", "pyserial"]
        proc = subprocess.run(install, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return str(python)


def test_tflite_runtime_makes_the_same_decisions_as_litert(tmp_path, tflite_runtime_python):
    # A lifted budget: this compares what the two interpreters compute, not how fast they are.
    common = ["replay", str(BUNDLED_LOG), "--model", str(BUNDLED_SPEC), "--budget-ms", "10000", "--json"]
    litert = run_cli(*common, "--backend", "litert", "--decisions", str(tmp_path / "a.jsonl"), check=True)
    classic = run_cli(*common, "--backend", "tflite-runtime", "--decisions", str(tmp_path / "b.jsonl"),
                      python=tflite_runtime_python, check=True)
    assert json.loads(classic.stdout)["backend"] == "tflite-runtime"
    assert json.loads(litert.stdout)["backend"] == "litert"
    a, b = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    assert [r["seq"] for r in a] == [r["seq"] for r in b]
    assert all(r["source"] == "model" for r in a + b)
    # LiteRT runs int8 through XNNPACK, tflite-runtime through its reference kernels: they requantize
    # intermediate layers a step apart, which the softmax can widen. Decisions may differ only where
    # the model itself was torn between two classes.
    disagree = [(ra, rb) for ra, rb in zip(a, b) if ra["action"] != rb["action"]]
    assert len(disagree) <= 0.01 * len(a)
    for ra, rb in disagree:
        top2 = sorted(ra["output"])[-2:]
        assert top2[1] - top2[0] < 0.25, (ra, rb)
    accuracies = json.loads(litert.stdout)["accuracy"], json.loads(classic.stdout)["accuracy"]
    assert min(accuracies) > 0.9 and abs(accuracies[0] - accuracies[1]) <= 0.01
