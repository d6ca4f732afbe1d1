"""The TFLite interpreters people actually install, behind one small interface.

All three packages expose the same ``Interpreter`` class (same methods, same
semantics); what differs is which one is installed and what it runs on:

* ``litert`` — ``ai-edge-litert``, the maintained successor (numpy 2, XNNPACK
  kernels for int8; x86_64 and aarch64 wheels).
* ``tflite-runtime`` — the classic package, frozen at 2.14; needs ``numpy<2``
  and is the one with armv7l (32-bit Raspberry Pi OS) builds.
* ``tensorflow`` — full TensorFlow's ``tf.lite``, if it happens to be there.

The first one that imports wins, in that order, unless the user names one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..errors import BackendError


@dataclass(frozen=True)
class Backend:
    """Where a backend's ``Interpreter`` class lives and which package versions it."""

    name: str
    module: str
    distribution: str


BACKENDS: Dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
        Backend("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
        Backend("tensorflow", "tensorflow.lite.python.interpreter", "tensorflow"),
    )
}


def _import(backend: Backend) -> Tuple[Optional[Any], str]:
    """The backend's Interpreter class, or None and why it cannot be used."""
    try:
        module = importlib.import_module(backend.module)
    except Exception as exc:  # an ImportError, or a broken native build (numpy ABI)
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return module.Interpreter, ""


def backend_version(backend: Backend) -> str:
    """The installed version of the backend's distribution, or '?'."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(backend.distribution)
    except PackageNotFoundError:
        return "?"


def available_backends() -> List[str]:
    """Names of the backends that import here, in order of preference."""
    return [name for name, b in BACKENDS.items() if _import(b)[0] is not None]


def resolve_backend(name: Optional[str] = None) -> Tuple[Backend, Any]:
    """Pick the named backend, or the first that imports; return it and its Interpreter class."""
    if name is not None:
        backend = BACKENDS.get(name)
        if backend is None:
            raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
        interpreter_class, why = _import(backend)
        if interpreter_class is None:
            hint = " (tflite-runtime needs numpy<2)" if name == "tflite-runtime" else ""
            raise BackendError(f"backend {name!r} cannot be used here: {why}; "
                               f"install it with 'pip install {backend.distribution}'{hint}")
        return backend, interpreter_class
    reasons = []
    for backend in BACKENDS.values():
        interpreter_class, why = _import(backend)
        if interpreter_class is not None:
            return backend, interpreter_class
        reasons.append(f"{backend.name}: {why}")
    raise BackendError("no TFLite interpreter is installed; install one with 'pip install ai-edge-litert' "
                       "(or 'pip install tflite-runtime \"numpy<2\"' on armv7l) [" + "; ".join(reasons) + "]")
