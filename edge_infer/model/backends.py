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
import platform
import sys
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
    broken = []
    for backend in BACKENDS.values():
        interpreter_class, why = _import(backend)
        if interpreter_class is not None:
            return backend, interpreter_class
        if not why.startswith("ModuleNotFoundError"):  # installed but failing to import: worth naming
            broken.append(f"{backend.name}: {why}")
    raise BackendError(missing_interpreter_hint(platform.machine(), sys.version_info[:2])
                       + ("" if not broken else " [" + "; ".join(broken) + "]"))


#: Where the package index has interpreter wheels (setup.cfg installs one only there): machines, and the
#: newest CPython (major, minor) with a wheel. Checked by scripts/check_aarch64.sh; docs/aarch64.md.
LITERT_MACHINES, LITERT_NEWEST = ("x86_64", "aarch64", "arm64"), (3, 14)
TFLITE_RUNTIME_MACHINES, TFLITE_RUNTIME_NEWEST = ("armv7l",), (3, 11)


def missing_interpreter_hint(machine: str, python: "tuple[int, int]") -> str:
    """One line: no interpreter imports here; which one this machine and Python take, and how to get it.

    ``pip install edge-infer`` brings the interpreter along only where the package index has a wheel
    for it, so that installing works everywhere; this is what the user reads where it had none.
    """
    where = f"{machine} with Python {python[0]}.{python[1]}"
    if machine in LITERT_MACHINES and python <= LITERT_NEWEST:
        how = "install LiteRT: pip install ai-edge-litert"
    elif machine in TFLITE_RUNTIME_MACHINES and python <= TFLITE_RUNTIME_NEWEST:
        how = "install tflite-runtime: pip install tflite-runtime \"numpy<2\""
    elif machine in TFLITE_RUNTIME_MACHINES:
        how = ("tflite-runtime has wheels for armv7l only up to Python 3.11: run edge-infer under Python 3.9-3.11 "
               "and pip install tflite-runtime \"numpy<2\" there, or use a 64-bit OS (aarch64) and "
               "pip install ai-edge-litert")
    elif machine in LITERT_MACHINES:
        how = (f"ai-edge-litert has wheels up to Python {LITERT_NEWEST[0]}.{LITERT_NEWEST[1]}: run edge-infer "
               "under one of those and pip install ai-edge-litert")
    else:
        how = ("neither ai-edge-litert nor tflite-runtime has wheels for this machine: pip install tensorflow "
               "if it has one, or build LiteRT from source")
    return f"no TFLite interpreter is installed ({where}); {how}"
