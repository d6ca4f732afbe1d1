"""Open a model the way the command line names it: a spec (.toml) or a bare .tflite.

Also finds the bundled model and log, which ``pip install .`` puts under
``<prefix>/share/edge-infer/models`` and a source checkout has in ``models/``.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import EdgeInferError, SpecError
from .engine import Engine
from .spec import Action, ModelSpec, load_spec, spec_for_bare_model

BUNDLED_SPEC = "basic_motions/basic_motions.toml"
BUNDLED_LOG = "basic_motions/basic_motions_test.csv"


def models_dir() -> Path:
    """Where the bundled models are: $EDGE_INFER_MODELS, the source checkout, or the install prefix."""
    candidates = [
        Path(os.environ["EDGE_INFER_MODELS"]) if os.environ.get("EDGE_INFER_MODELS") else None,
        Path(__file__).resolve().parents[2] / "models",
        # where pip put setup.cfg's data_files: the environment's prefix, or the user scheme (pip install --user)
        *(Path(sysconfig.get_path("data", scheme)) / "share" / "edge-infer" / "models" for scheme in _schemes()),
    ]
    for candidate in candidates:
        if candidate is not None and (candidate / BUNDLED_SPEC).is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates if c is not None)
    raise EdgeInferError(f"the bundled model is not where pip installs it (looked in {looked}); set "
                         "EDGE_INFER_MODELS to the folder holding basic_motions/, or name a model with --model")


def _schemes() -> List[str]:
    """The install schemes whose data folder may hold the bundled models: this one first, then the user's."""
    schemes = [sysconfig.get_default_scheme() if hasattr(sysconfig, "get_default_scheme")
               else sysconfig._get_default_scheme()]  # type: ignore[attr-defined]  # Python 3.9
    user = f"{os.name}_user"
    if user in sysconfig.get_scheme_names() and user not in schemes:
        schemes.append(user)
    return schemes


def bundled_spec() -> Path:
    return models_dir() / BUNDLED_SPEC


def bundled_log() -> Path:
    return models_dir() / BUNDLED_LOG


def parse_action(text: Optional[str]) -> Optional[Action]:
    """A --fallback value: an integer class index, or a label."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def open_model(model: Optional[str], channels: Optional[List[str]] = None, *, backend: Optional[str] = None,
               hop: Optional[int] = None, budget_ms: Optional[float] = None, fallback: Optional[str] = None,
               num_threads: int = 1) -> Tuple[ModelSpec, Engine]:
    """Load a spec and its model (or a bare model), check they agree, apply command-line overrides.

    ``channels`` names the source's channels; a bare model takes them in order.
    """
    if hop is not None and hop < 1:
        raise SpecError(f"--hop must be at least 1, not {hop}")
    if budget_ms is not None and not budget_ms > 0:
        raise SpecError(f"--budget-ms must be greater than 0, not {budget_ms}")
    path = Path(model) if model else bundled_spec()
    if path.suffix.lower() == ".toml":
        spec = load_spec(path)
        engine = Engine(spec.model_path, backend=backend, num_threads=num_threads, check_sha256=spec.check_hash)
        spec.check_against(engine.window, engine.channels, engine.output_size, engine.sha256)
    else:
        engine = Engine(path, backend=backend, num_threads=num_threads)
        names = list(channels) if channels else [f"ch{i}" for i in range(engine.channels)]
        spec = spec_for_bare_model(path, engine.window, names, hop, budget_ms, parse_action(fallback))
    spec = with_overrides(spec, hop=hop, budget_ms=budget_ms, fallback=fallback)
    engine.set_normalization(spec.offset, spec.scale)
    return spec, engine


def with_overrides(spec: ModelSpec, *, hop: Optional[int] = None, budget_ms: Optional[float] = None,
                   fallback: Optional[str] = None) -> ModelSpec:
    """The spec with the command line's (or a config stream's) hop, budget and fallback where given.

    Streams that share a model each get their own copy with their own values (docs/streams.md).
    """
    return replace(
        spec,
        hop=hop or spec.hop,
        budget_ms=budget_ms or spec.budget_ms,
        fallback_action=spec.fallback_action if fallback is None else parse_action(fallback),
    )
