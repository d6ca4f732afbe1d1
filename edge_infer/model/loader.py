"""Open a model the way the command line names it: a spec (.toml) or a bare .tflite.

Also finds the bundled model and log, which ``pip install .`` puts under
``<prefix>/share/edge-infer/models`` and a source checkout has in ``models/``.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..errors import EdgeInferError, SpecError, TrustError
from ..settings import values
from .engine import Engine
from .signing import TrustedKey, VerifiedBundle, verify_bundle
from .spec import Action, ModelSpec, load_spec, spec_for_bare_model

BUNDLED_SPEC = "basic_motions/basic_motions.toml"
BUNDLED_LOG = "basic_motions/basic_motions_test.csv"


def models_dir() -> Path:
    """Where the bundled models are: $EDGE_INFER_MODELS, the source checkout, or the install prefix.

    A set $EDGE_INFER_MODELS that does not hold them is an error naming it, not a silent fall-through to
    another copy: the operator who set it meant that folder.
    """
    chosen = os.environ.get("EDGE_INFER_MODELS")
    if chosen:
        if not (Path(chosen) / BUNDLED_SPEC).is_file():
            what = "does not exist" if not Path(chosen).exists() else f"has no {BUNDLED_SPEC}"
            raise EdgeInferError(f"EDGE_INFER_MODELS={chosen} {what}; point it at the folder holding "
                                 "basic_motions/, unset it, or name a model with --model")
        return Path(chosen)
    candidates = [
        Path(__file__).resolve().parents[2] / "models",
        # where pip put setup.cfg's data_files: the environment's prefix, or the user scheme (pip install --user)
        *(Path(sysconfig.get_path("data", scheme)) / "share" / "edge-infer" / "models" for scheme in _schemes()),
    ]
    for candidate in candidates:
        if (candidate / BUNDLED_SPEC).is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
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


def verify_model_bundle(model: Optional[str], trusted_keys: Sequence["str | Path | TrustedKey"]) -> VerifiedBundle:
    """The bundle ``--model`` names (the bundled spec if None), verified against ``trusted_keys``.

    The one call for every command that takes ``--trusted-key`` (run, replay, eval): refuses, as a
    :class:`~edge_infer.errors.TrustError`, a bare model (it has no spec to sign), an unsigned bundle, a bad
    signature, an untrusted key, and a spec or model that is not what was signed. Load the result with
    ``open_model(..., bundle=...)``.
    """
    path = Path(model) if model else bundled_spec()
    if path.suffix.lower() != ".toml":
        raise TrustError(f"model {path} is a bare model, which cannot be signed; with trusted keys, name a "
                         "signed spec (a .toml beside its .toml.sig)")
    return verify_bundle(path, trusted_keys)


def open_model(model: Optional[str], channels: Optional[List[str]] = None, *, backend: Optional[str] = None,
               hop: Optional[int] = None, budget_ms: Optional[float] = None, fallback: Optional[str] = None,
               num_threads: int = 1, trusted_keys: Sequence["str | Path | TrustedKey"] = (),
               bundle: Optional[VerifiedBundle] = None) -> Tuple[ModelSpec, Engine]:
    """Load a spec and its model (or a bare model), check they agree, apply command-line overrides.

    ``channels`` names the source's channels; a bare model takes them in order. With ``trusted_keys`` the
    bundle must carry a signature by one of them (:func:`~edge_infer.model.signing.verify_bundle`), checked
    before the interpreter sees the model; ``bundle`` is one verified already. Either way the spec and the
    model are loaded from the verified bytes, not read from their files again.
    """
    for option, value, rule in (("--hop", hop, values.count(1)), ("--budget-ms", budget_ms, values.MILLISECONDS)):
        if value is not None:  # the command line checked them already; a caller from Python gets the same rules
            try:
                rule.check(value)
            except values.ValueProblem as exc:
                raise SpecError(f"{option} {exc}") from None
    path = Path(model) if model else bundled_spec()
    if bundle is None and trusted_keys:
        bundle = verify_model_bundle(model, trusted_keys)
    if bundle is not None:
        spec = bundle.spec  # parsed from the verified bytes
        engine = Engine(spec.model_path, backend=backend, num_threads=num_threads, check_sha256=spec.check_hash,
                        model_bytes=bundle.model_bytes)
        spec.check_against(engine.window, engine.channels, engine.output_size, engine.sha256)
    elif path.suffix.lower() == ".toml":
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
