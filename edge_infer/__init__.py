"""edge-infer: run a quantized TFLite model on sensor frames within a time budget, with a safe fallback.

The data path, one package per stage::

    sources/ → checks/ → window.py → deadline/ → model/ → decide/ → sinks/

``service/`` runs the loop under systemd, ``lab/`` judges replays, ``cli/`` is the command line.

:class:`Runtime` wires them; :func:`open_model` loads a spec or a bare model.
"""

from ._version import __version__
from .decide.decision import Decision
from .decide.reasons import Reason
from .errors import EdgeInferError
from .model.engine import Engine
from .model.loader import open_model
from .model.spec import ModelSpec, load_spec
from .runtime import Runtime

__all__ = ["Decision", "EdgeInferError", "Engine", "ModelSpec", "Reason", "Runtime", "load_spec", "open_model",
           "__version__"]
