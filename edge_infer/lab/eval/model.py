"""A model loaded for offline evaluation: spec, decision rule, checks, fallback, and two interpreters.

One :class:`LoadedModel` per worker process (or Ray actor), loaded once and
used for every log it is given. It holds the same pieces the real-time loop
builds (:func:`~edge_infer.model.loader.open_model`,
:class:`~edge_infer.decide.decision.DecisionRule`,
:func:`~edge_infer.checks.guard.build_guard`,
:func:`~edge_infer.decide.fallback.build_fallback`), so ``eval`` decides by
the loop's rules, plus a second interpreter resized to the batch size that
measured fastest here (:func:`choose_batch`). The batch-1 interpreter stays:
it re-decides the rare window whose top two outputs are within one
quantization step (a batched kernel may round that one differently), and it
times single invokes for the invoke-time distribution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...checks.config import ChecksConfig
from ...checks.guard import build_guard
from ...decide.decision import DecisionRule
from ...decide.fallback import ConstantFallback, build_fallback
from ...errors import ModelError
from ...io import CHUNK_ROWS
from ...model.engine import Engine
from ...model.loader import open_model
from ...model.spec import Action, ModelSpec

#: Batch sizes tried; the fastest per window wins (1 is always possible).
BATCH_CANDIDATES = (1, 16, 64, 256, 1024)
#: Windows timed per candidate when choosing.
BATCH_PROBE_WINDOWS = 2048


@dataclass(frozen=True)
class EvalOptions:
    """What a worker needs to load a model the way the command line names it (picklable: sent to workers)."""

    model: Optional[str] = None
    backend: Optional[str] = None
    hop: Optional[int] = None
    budget_ms: Optional[float] = None
    fallback: Optional[str] = None
    strict: bool = False
    batch: Optional[int] = None  #: windows per invoke; None: the fastest measured
    chunk_rows: int = CHUNK_ROWS
    #: single invokes timed for the invoke-time distribution: the first ``time_first`` windows of each log and
    #: then one in ``time_every`` (a timed invoke costs as much as ~20 windows in a batch)
    time_first: int = 100
    time_every: int = 256
    #: ``--trusted-key``: public key files; every worker and Ray actor verifies the bundle before it loads it
    trusted_keys: Tuple[str, ...] = ()


@dataclass
class LoadedModel:
    """Everything one worker needs to decide windows like the runtime would."""

    spec: ModelSpec
    engine: Engine          #: resized to ``batch``
    single: Engine          #: batch 1: exact re-decisions, invoke timing
    rule: DecisionRule
    checks: ChecksConfig
    flag_min_confidence: float
    fallback: ConstantFallback
    batch: int
    options: EvalOptions
    actions: List[Action] = field(default_factory=list)  #: action codes: the outputs' actions, then the safe one

    @property
    def has_spec(self) -> bool:
        return self.spec.spec_path is not None

    @property
    def name(self) -> str:
        return self.spec.name or self.spec.model_path.name

    def action_code(self, action: Action) -> int:
        """The code of an action in :attr:`actions` (fallback strategies may answer with any)."""
        try:
            return self.actions.index(action)
        except ValueError:
            self.actions.append(action)
            return len(self.actions) - 1

    def describe(self) -> Dict[str, Any]:
        return {"model": self.name, "sha256": self.engine.sha256, "backend": self.engine.backend.name,
                "backend_version": self.engine.backend_version, "window": self.spec.window, "hop": self.spec.hop,
                "batch": self.batch, "budget_ms": self.spec.budget_ms, "fallback": self.fallback.describe()}


def load_model(options: EvalOptions) -> LoadedModel:
    """Open the model ``options`` names, build its rules, and choose the batch size.

    With ``options.trusted_keys`` the bundle is verified before the interpreter sees it (as ``run`` does,
    :func:`~edge_infer.model.loader.open_model`), and both interpreters load the verified bytes.
    """
    spec, engine = open_model(options.model, None, backend=options.backend, hop=options.hop,
                              budget_ms=options.budget_ms, fallback=options.fallback,
                              trusted_keys=options.trusted_keys)
    single = Engine(engine.path, backend=engine.backend.name, check_sha256=spec.check_hash,
                    model_bytes=engine.model_bytes)
    single.set_normalization(spec.offset, spec.scale)
    rule = DecisionRule(spec)
    guard = build_guard(spec, rule)  # as the loop builds it: a flagged low confidence moves from rule to guard
    outputs = list(spec.labels) if spec.labels else list(range(engine.output_size))
    model = LoadedModel(spec=spec, engine=engine, single=single, rule=rule, checks=guard.config,
                        flag_min_confidence=guard.flag_min_confidence, fallback=build_fallback(spec), batch=1,
                        options=options, actions=[*outputs, spec.fallback_action])
    model.batch = options.batch or choose_batch(engine, single, spec)
    if model.batch != 1:
        engine.resize_batch(model.batch)
    return model


def output_tolerance(engine: Engine) -> float:
    """One quantization step of the output; for a float output, a few float32 roundings of a typical value."""
    params = engine.output_params
    return params.scale * 1.0001 if params.quantized else 1e-5


def choose_batch(engine: Engine, single: Engine, spec: ModelSpec,
                 candidates: Sequence[int] = BATCH_CANDIDATES) -> int:
    """The candidate batch size with the lowest measured time per window whose outputs match batch 1's.

    Windows are random, spread like the model's normalised input. A size the graph cannot take (a fixed
    RESHAPE) or that answers differently by more than one quantization step is skipped.
    """
    rng = np.random.default_rng(0)
    probe = (rng.normal(size=(max(candidates), spec.window, len(spec.channels))) * spec.scale
             + spec.offset).astype(np.float32)
    reference = np.array([single.infer(w).copy() for w in probe[:64]])
    tolerance = output_tolerance(engine)
    best, best_cost = 1, _cost(single, probe, 1)
    for batch in candidates:
        if batch == 1:
            continue
        try:
            engine.resize_batch(batch)
        except ModelError:
            break  # a graph that cannot take 16 cannot take more
        got = engine.infer_batch(_converted(engine, probe[:batch]))[:64]
        if np.max(np.abs(got - reference[:len(got)]), initial=0.0) > tolerance:
            continue
        cost = _cost(engine, probe, batch)
        if cost < best_cost:
            best, best_cost = batch, cost
    engine.resize_batch(1)
    return best


def _cost(engine: Engine, probe: np.ndarray, batch: int) -> float:
    """Seconds per window: the best of three timings of about BATCH_PROBE_WINDOWS windows."""
    rounds = max(1, BATCH_PROBE_WINDOWS // batch)
    windows = probe[:batch] if batch == 1 else _converted(engine, probe[:batch])
    run = (lambda w: engine.infer(w[0])) if batch == 1 else engine.infer_batch
    run(windows)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            run(windows)
        best = min(best, (time.perf_counter() - start) / (rounds * batch))
    return best


def _converted(engine: Engine, windows: np.ndarray) -> np.ndarray:
    """Windows in the input tensor's dtype, as :meth:`Engine.infer_batch` takes them."""
    return engine.convert_frames(windows.reshape(-1, windows.shape[2])).reshape(windows.shape)
