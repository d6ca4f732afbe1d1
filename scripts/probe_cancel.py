#!/usr/bin/env python3
"""Can an overrunning LiteRT invoke be cancelled from Python? A probe of ``libLiteRt.so``'s C API via ctypes.

The Python ``Interpreter`` has no cancellation, and the Python ``CompiledModel`` runs on its own copy of the
runtime (``libpywrap_litert_common.so``) without exposing a handle. ``libLiteRt.so`` in the same wheel exports
the CompiledModel C API with ``LiteRtSetCompiledModelCancellationFunction``. This script drives that C API
with ctypes (the signatures of ai-edge-litert 2.3.0: ``LiteRtCreateModelFromBuffer`` takes the environment
first, unlike older headers), on the test builder's slow model, and registers as the check function libc's
``strlen`` on a two-byte flag: C code, no Python callback, no GIL; it returns 0 while the flag is clear and 1
once it is set. It then runs the model: without the flag, with the flag set before the run, and with the
flag set 5 ms into the run. Findings are in docs/deadlines.md ("Cancelling an invoke").

usage: python scripts/probe_cancel.py
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ai_edge_litert  # noqa: E402

from edge_infer.testing.tflite_builder import PRESET_SLOW, slow_model  # noqa: E402

P = ctypes.c_void_p
CPU = 1  # kLiteRtHwAcceleratorCpu


def check(name: str, status: int) -> None:
    if status != 0:
        raise SystemExit(f"{name} failed with LiteRtStatus {status}")


def main() -> int:
    lib = ctypes.CDLL(os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so"))
    env, model, options, compiled, signature = P(), P(), P(), P(), P()
    check("LiteRtCreateEnvironment", lib.LiteRtCreateEnvironment(0, None, ctypes.byref(env)))
    data = slow_model(channels=6, **PRESET_SLOW)
    blob = ctypes.create_string_buffer(data, len(data))
    check("LiteRtCreateModelFromBuffer",
          lib.LiteRtCreateModelFromBuffer(env, blob, ctypes.c_size_t(len(data)), ctypes.byref(model)))
    check("LiteRtCreateOptions", lib.LiteRtCreateOptions(ctypes.byref(options)))
    check("LiteRtSetOptionsHardwareAccelerators", lib.LiteRtSetOptionsHardwareAccelerators(options, CPU))
    check("LiteRtCreateCompiledModel", lib.LiteRtCreateCompiledModel(env, model, options, ctypes.byref(compiled)))
    check("LiteRtGetModelSignature", lib.LiteRtGetModelSignature(model, ctypes.c_size_t(0), ctypes.byref(signature)))

    def tensor_buffer(tensor_getter: str, requirements_getter: str) -> P:
        tensor, requirements, buffer = P(), P(), P()
        tensor_type = ctypes.create_string_buffer(512)  # LiteRtRankedTensorType, filled and passed back as is
        check(tensor_getter, getattr(lib, tensor_getter)(signature, ctypes.c_size_t(0), ctypes.byref(tensor)))
        check("LiteRtGetRankedTensorType", lib.LiteRtGetRankedTensorType(tensor, tensor_type))
        check(requirements_getter, getattr(lib, requirements_getter)(compiled, ctypes.c_size_t(0), ctypes.c_size_t(0),
                                                                     ctypes.byref(requirements)))
        check("LiteRtCreateManagedTensorBufferFromRequirements",
              lib.LiteRtCreateManagedTensorBufferFromRequirements(env, tensor_type, requirements, ctypes.byref(buffer)))
        return buffer

    inputs = (P * 1)(tensor_buffer("LiteRtGetSignatureInputTensorByIndex",
                                   "LiteRtGetCompiledModelInputBufferRequirements"))
    outputs = (P * 1)(tensor_buffer("LiteRtGetSignatureOutputTensorByIndex",
                                    "LiteRtGetCompiledModelOutputBufferRequirements"))

    def run(label: str) -> None:
        start = time.perf_counter()
        status = lib.LiteRtRunCompiledModel(compiled, ctypes.c_size_t(0), ctypes.c_size_t(1), inputs,
                                            ctypes.c_size_t(1), outputs)
        print(f"{label}: status {status} ({'ok' if status == 0 else 'cancelled/failed'}) after "
              f"{(time.perf_counter() - start) * 1000:.1f} ms", flush=True)

    run("run, no cancellation function")
    flag = ctypes.create_string_buffer(2)
    strlen = ctypes.cast(ctypes.CDLL(None).strlen, P)
    check("LiteRtSetCompiledModelCancellationFunction",
          lib.LiteRtSetCompiledModelCancellationFunction(compiled, ctypes.cast(flag, P), strlen))
    run("run, flag clear")
    flag[0] = b"\x01"
    run("run, flag set before the run")
    flag[0] = b"\x00"

    def cancel_soon() -> None:
        time.sleep(0.005)
        flag[0] = b"\x01"

    threading.Thread(target=cancel_soon).start()
    run("run, flag set 5 ms into the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
