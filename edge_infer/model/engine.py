"""The interpreter stage: load a .tflite model, quantize in, invoke, dequantize out.

:class:`Engine` is what the TFLite ``Interpreter`` leaves to its user: it
checks the file before the native loader sees it, reads the input and output
quantization once, and converts windows through buffers allocated at load
time. An Engine is not thread-safe: exactly one thread may use it at a time
(the deadline scheduler owns it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import ModelError
from .backends import Backend, backend_version, resolve_backend
from .probe import probe
from .quantize import SUPPORTED_DTYPES, InputConverter, OutputConverter, QuantParams

#: The flatbuffer file identifier of a TFLite model, at byte offset 4.
TFLITE_MAGIC = b"TFL3"


def read_model_bytes(path: "str | Path") -> bytes:
    """The model file's bytes, after checking that it can be a TFLite model at all."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model {path} not found; pass the path of a .tflite file or of its .toml spec") from None
    except IsADirectoryError:
        raise ModelError(f"model {path} is a directory; pass the path of a .tflite file or of its .toml spec") \
            from None
    except OSError as exc:
        raise ModelError(f"cannot read model {path}: {exc.strerror or exc}") from None
    return check_model_bytes(data, path)


def check_model_bytes(data: bytes, path: "str | Path") -> bytes:
    """``data`` if it can be a TFLite model at all (the flatbuffer identifier), else a ModelError naming ``path``."""
    if len(data) < 8 or data[4:8] != TFLITE_MAGIC:
        raise ModelError(f"model {path} is not a TFLite flatbuffer (no 'TFL3' identifier); "
                         "convert it with tf.lite.TFLiteConverter")
    return data


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: What the native runtime prints on every load; said once per process it is noise, not news.
_NATIVE_NOISE = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


@contextlib.contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    """Hold back the native runtime's routine INFO lines while a model loads.

    LiteRT writes "INFO: Created ... delegate" to file descriptor 2 from C++
    on every load, which would make an error message two lines and scroll a
    service's journal. Whatever else the runtime prints (its real warnings and
    errors) is passed through to stderr after the load.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if line.strip() and not line.strip().startswith(_NATIVE_NOISE)]
            if kept:
                os.write(2, b"".join(kept))


def _window_shape(shape: Tuple[int, ...], path: Path) -> Tuple[int, int]:
    """(frames, channels) from an input shape [1, W, C], [W, C] or [1, W, C, 1]."""
    dims = tuple(int(d) for d in shape)
    if len(dims) == 2:
        return dims[0], dims[1]
    if len(dims) == 3 and dims[0] == 1:
        return dims[1], dims[2]
    if len(dims) == 4 and dims[0] == 1 and dims[3] == 1:
        return dims[1], dims[2]
    raise ModelError(f"model {path}: input shape {list(dims)} is not a window of samples; "
                     "expected [1, window, channels] (or [window, channels])")


def _quant_params(detail: Dict[str, Any], role: str, path: Path) -> QuantParams:
    dtype = np.dtype(detail["dtype"]).type
    if dtype not in SUPPORTED_DTYPES:
        raise ModelError(f"model {path}: {role} tensor {detail['name']!r} has dtype {np.dtype(dtype).name}; "
                         "supported: int8, uint8, float32")
    scales = detail.get("quantization_parameters", {}).get("scales", np.zeros(0))
    if len(scales) > 1:
        raise ModelError(f"model {path}: {role} tensor {detail['name']!r} is quantized per axis; "
                         "only per-tensor quantization is supported for inputs and outputs")
    scale, zero_point = detail["quantization"]
    if dtype is np.float32:
        scale, zero_point = 0.0, 0
    elif scale == 0.0:
        raise ModelError(f"model {path}: {role} tensor {detail['name']!r} is {np.dtype(dtype).name} "
                         "but has no quantization scale")
    return QuantParams(dtype=dtype, scale=float(scale), zero_point=int(zero_point))


class Engine:
    """One loaded model on one backend, with its conversion buffers."""

    def __init__(self, model_path: "str | Path", backend: Optional[str] = None, num_threads: int = 1,
                 check_sha256: Optional[Callable[[str], None]] = None, model_bytes: Optional[bytes] = None):
        """``check_sha256`` (a spec's :meth:`~edge_infer.model.spec.ModelSpec.check_hash`) may refuse the file by
        its hash before the native interpreter parses it. ``model_bytes``: the model, already read and
        verified (a signed bundle's bytes, or the bytes the isolated mode's parent checked); the file at
        ``model_path`` then only names the model and is not read at all, so what runs is never what the file
        holds by the time a child (re)starts."""
        self.path = Path(model_path)
        self.num_threads = num_threads
        self.model_bytes = read_model_bytes(self.path) if model_bytes is None else check_model_bytes(model_bytes,
                                                                                                     self.path)
        self.sha256 = sha256_hex(self.model_bytes)
        if check_sha256 is not None:
            check_sha256(self.sha256)
        self.backend: Backend
        self.backend, interpreter_class = resolve_backend(backend)
        self.backend_version = backend_version(self.backend)
        probe(interpreter_class, self.model_bytes, self.path, self.backend.name)  # a crash there is a ModelError
        try:
            with _native_stderr_filtered():
                self._interpreter = interpreter_class(model_content=self.model_bytes, num_threads=num_threads)
                self._interpreter.allocate_tensors()
            # in the try too: a corrupt model can have tensor names that are not UTF-8 (UnicodeDecodeError)
            inputs = self._interpreter.get_input_details()
            outputs = self._interpreter.get_output_details()
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"model {self.path} cannot be loaded by {self.backend.name} "
                             f"(truncated or corrupt?): {reason}") from None
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"model {self.path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                             "edge-infer runs models with one input window and one output vector")
        self.input_detail, self.output_detail = inputs[0], outputs[0]
        self.window, self.channels = _window_shape(tuple(self.input_detail["shape"]), self.path)
        self.input_params = _quant_params(self.input_detail, "input", self.path)
        self.output_params = _quant_params(self.output_detail, "output", self.path)
        self.output_size = int(np.prod(self.output_detail["shape"]))
        self.batch = 1  #: windows per invoke (resize_batch)
        self._input_index = self.input_detail["index"]
        self._output_view = self._interpreter.tensor(self.output_detail["index"])
        self._out = OutputConverter(self.output_params, self.output_size, tuple(self.output_detail["shape"]))
        self.set_normalization(np.zeros(self.channels), np.ones(self.channels))

    def set_normalization(self, offset: np.ndarray, scale: np.ndarray) -> None:
        """Apply ``(x - offset) / scale`` per channel before quantizing (from the spec)."""
        self.normalization = (np.asarray(offset, dtype=np.float32), np.asarray(scale, dtype=np.float32))
        batch = self.batch
        shape = (self.window, self.channels) if batch == 1 else (batch, self.window, self.channels)
        self._in = InputConverter(self.input_params, shape, offset, scale)
        self._input_shaped = self._in.buffer.reshape(self._input_shape(batch))
        self._prepared: "Tuple[Optional[np.ndarray], np.ndarray]" = (None, self._input_shaped)

    def set_input(self, window: np.ndarray) -> None:
        """Normalise and quantize a (frames, channels) window into the input tensor."""
        self._in.convert(window)
        # One C call copies the buffer in; a view of the tensor would have to be created and dropped each time.
        self._interpreter.set_tensor(self._input_index, self._input_shaped)

    def invoke(self) -> None:
        """Run the model on the input set last. Releases the GIL; cannot be cancelled."""
        self._interpreter.invoke()

    def output(self) -> np.ndarray:
        """The dequantized output vector. The array is reused: copy it to keep it."""
        return self._out.convert(self._output_view())  # the tensor's view is dropped on return, before any invoke

    def prepare_input(self, window: np.ndarray, converted: np.ndarray) -> None:
        """``converted`` is ``window`` already in the input tensor's dtype and shape (cut from
        :meth:`convert_frames`: :mod:`.ahead`): the next :meth:`infer` of this very array sets it instead of
        converting. Any other array passed to :meth:`infer` is converted as usual (a worker's copy, the warm-up)."""
        self._prepared = (window, converted)

    @property
    def input_shape(self) -> List[int]:
        """The input tensor's shape (at the current batch)."""
        return self._input_shape(self.batch)

    def infer(self, window: np.ndarray) -> np.ndarray:
        """set_input, invoke, output: one window in, the real-valued output out (reused buffer)."""
        # their bodies rather than three more calls: this runs once per window
        prepared_for, prepared = self._prepared
        if window is not prepared_for:
            self._in.convert(window)
            prepared = self._input_shaped
        interpreter = self._interpreter
        interpreter.set_tensor(self._input_index, prepared)
        interpreter.invoke()
        return self._out.convert(self._output_view())

    # --- many windows per invoke (eval: offline only; the real-time loop never resizes) ---------------------

    def _input_shape(self, batch: int) -> List[int]:
        shape = [int(d) for d in self.input_detail["shape"]]
        if batch != 1:
            shape[0] = batch
        return shape

    def resize_batch(self, batch: int) -> None:
        """Let one invoke take ``batch`` windows (LiteRT's ``resize_tensor_input``, then ``allocate_tensors``).

        Per window, a batch saves the interpreter's fixed cost per invoke (a few microseconds, most of a small
        model's time). Raises :class:`ModelError` if the graph cannot take a batch (an input without a batch
        axis, a RESHAPE to a fixed batch of 1); the engine is then back at its previous batch.
        """
        previous = self.batch
        if len(self.input_detail["shape"]) == 2 and batch != 1:
            raise ModelError(f"model {self.path}: input shape {list(self.input_detail['shape'])} has no batch axis")
        try:
            self._interpreter.resize_tensor_input(self._input_index, self._input_shape(batch))
            self._interpreter.allocate_tensors()
            detail = self._interpreter.get_output_details()[0]
            if int(np.prod(detail["shape"])) != batch * self.output_size:
                raise ValueError(f"output shape {list(detail['shape'])} for a batch of {batch}")
        except (ValueError, RuntimeError) as exc:
            if batch != previous:
                self.resize_batch(previous)
            raise ModelError(f"model {self.path} cannot run a batch of {batch}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") \
                from None
        self.batch = batch
        self._output_view = self._interpreter.tensor(detail["index"])
        self._out = OutputConverter(self.output_params, batch * self.output_size, tuple(detail["shape"]))
        self.set_normalization(*self.normalization)

    def convert_frames(self, frames: np.ndarray) -> np.ndarray:
        """Frames ``(n, channels)`` normalised and quantized into the input tensor's dtype.

        The conversion is element by element, so a window cut from converted frames holds exactly what
        :meth:`set_input` makes of that window; converting each frame once instead of in every window that
        holds it saves ``window / hop`` conversions per frame.
        """
        return self.frames_converter(len(frames)).convert(frames)

    def frames_converter(self, frames: int) -> InputConverter:
        """A converter for ``(frames, channels)`` that computes each value exactly as :meth:`set_input` does."""
        return self._in.with_shape((frames, self.channels))

    def infer_batch(self, converted: np.ndarray) -> np.ndarray:
        """``(batch, window, channels)`` windows cut from :meth:`convert_frames` (any strides) in, ``(batch,
        outputs)`` real outputs out (a reused buffer). Fewer than ``batch`` windows leave the rest of the input
        as it was; their outputs are not meaningful."""
        np.copyto(self._in.buffer.reshape(self.batch, self.window, self.channels)[:len(converted)], converted)
        self._interpreter.set_tensor(self._input_index, self._input_shaped)
        self._interpreter.invoke()
        return self.output().reshape(self.batch, self.output_size)

    def describe(self) -> Dict[str, Any]:
        """What ``edge-infer inspect`` prints: tensors, quantization, size, hash, operators."""
        ops = getattr(self._interpreter, "_get_ops_details", None)
        # After delegation the list also holds DELEGATE nodes standing for the ops XNNPACK took over.
        operators = [op for op in (ops() if callable(ops) else []) if op["op_name"] != "DELEGATE"]
        return {
            "model": str(self.path),
            "size_bytes": len(self.model_bytes),
            "sha256": self.sha256,
            "backend": self.backend.name,
            "backend_version": self.backend_version,
            "inputs": [_tensor_info(d) for d in self._interpreter.get_input_details()],
            "outputs": [_tensor_info(d) for d in self._interpreter.get_output_details()],
            "operator_count": len(operators),
            "operators": sorted({op["op_name"] for op in operators}),
        }


def _tensor_info(detail: Dict[str, Any]) -> Dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(d) for d in detail["shape"]],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }
