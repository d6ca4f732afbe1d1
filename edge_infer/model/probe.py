"""Load a model once in a throw-away child process first, so a corrupt model cannot crash the runtime.

The TFLite interpreters parse the flatbuffer in native code, and a damaged
file can make them crash the whole process with SIGSEGV instead of raising
(found by ``scripts/fuzz_inputs.py``: a 624-byte mutation of a valid model
ends the process inside ``Interpreter(model_content=...)`` on LiteRT 2.3.0;
TensorFlow's SECURITY.md says models must be trusted). A service would then
crash-loop with nothing in the journal but "Segmentation fault". So before
the runtime loads a model, a forked child loads it, allocates its tensors and
reads its details, and exits; if the child dies from a signal the model is
refused with one clear line. A child that merely raises is ignored: the
parent's own load raises the same error, which :class:`~edge_infer.model.engine.Engine`
already turns into a :class:`~edge_infer.errors.ModelError`.

Forking costs a few milliseconds per load (measured in the test suite's many
loads). Where ``os.fork`` does not exist the probe is skipped.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError

#: A child that has not finished by then is stuck (say, on a lock another thread held when it forked), not
#: crashed: it is killed and the model is loaded as usual.
TIMEOUT_S = 10.0
FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)


def probe(interpreter_class: Any, model_bytes: bytes, path: Path, backend_name: str) -> None:
    """Raise :class:`ModelError` if loading ``model_bytes`` kills the process that does it."""
    if not hasattr(os, "fork"):
        return
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() in a threaded process; the child only
        warnings.simplefilter("ignore", DeprecationWarning)  # loads the model and _exit()s
        pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)  # the native runtime's INFO lines are the parent's to print, once
            for fatal in FATAL_SIGNALS:  # die of it, whatever handler the parent had (faulthandler, a fuzzer)
                signal.signal(fatal, signal.SIG_DFL)
            interpreter = interpreter_class(model_content=model_bytes, num_threads=1)
            interpreter.allocate_tensors()
            interpreter.get_input_details()
            interpreter.get_output_details()
            code = 0
        finally:
            os._exit(code)
    status = _wait(pid)
    if status is not None and os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        raise ModelError(f"model {path} crashes the {backend_name} interpreter ({name}) while loading: the file is "
                         "corrupt or not a model this backend can read; re-copy or re-convert it")


def _wait(pid: int) -> Optional[int]:
    """The child's wait status; None if it hangs (a lock held at fork time): killed, and the load goes ahead."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.001)
