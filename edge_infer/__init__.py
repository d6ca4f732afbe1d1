"""edge-infer: run a quantized TFLite model on sensor frames within a time budget, with a safe fallback.

The data path, one module per stage::

    sources/ (serial, log replay) → window → scheduler → engine (quantize, invoke,
    dequantize) → decision (model or fallback, with a reason) → sinks/

:class:`Runtime` wires them; :func:`open_model` loads a spec or a bare model.
"""

__version__ = "0.1.0"

from .decide.decision import Decision  # noqa: E402
from .model.engine import Engine  # noqa: E402
from .errors import EdgeInferError  # noqa: E402
from .model.loader import open_model  # noqa: E402
from .decide.reasons import Reason  # noqa: E402
from .runtime import Runtime  # noqa: E402
from .model.spec import ModelSpec, load_spec  # noqa: E402

__all__ = ["Decision", "EdgeInferError", "Engine", "ModelSpec", "Reason", "Runtime", "load_spec", "open_model",
           "__version__"]
