"""The model spec: a small TOML file beside each model that says how to feed it and act on it.

A ``.tflite`` file says what tensors it wants but not what they mean: which
sensor channel goes where, how to normalise, what the outputs are called,
what to do when the model cannot answer. The spec says that, and is checked
against the model at load time so that a spec and a model that drifted apart
fail loudly at start instead of deciding wrongly for weeks. The schema is in
README.md ("Model spec").

A bare ``.tflite`` also runs: :func:`spec_for_bare_model` derives what the
model's shape implies and takes the rest from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..checks.config import parse_checks
from ..errors import SpecError
from ..settings import values
from ..settings.toml_file import read_toml

Action = Union[str, int]

OUTPUT_KINDS = ("classes", "values")
DECISION_RULES = ("argmax",)
DEFAULT_BUDGET_MS = 50.0
#: What a bare model does when it cannot answer: -1 is "no class".
BARE_FALLBACK: Action = -1

_SCHEMA: Dict[str, Sequence[str]] = {
    "model": ("name", "file", "sha256", "version", "description"),
    "input": ("channels", "sample_rate_hz", "window", "hop", "offset", "scale"),
    "output": ("kind", "labels", "names"),
    "decision": ("rule", "min_confidence"),
    "deadline": ("budget_ms", "mode", "overload", "admission", "hang_limit_ms", "no_data_ms", "reserve_ms", "warmup"),
    "fallback": ("action", "strategy", "hold_ms"),
}


@dataclass
class ModelSpec:
    """Everything the runtime needs to know about one model, validated."""

    model_path: Path
    channels: List[str]
    window: int
    hop: int
    budget_ms: float
    fallback_action: Action
    name: str = ""
    version: str = ""
    description: str = ""
    sha256: Optional[str] = None
    sample_rate_hz: Optional[float] = None
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    scale: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    output_kind: str = "classes"
    labels: Optional[List[str]] = None
    min_confidence: float = 0.0
    spec_path: Optional[Path] = None
    #: Tables this module does not interpret (e.g. [checks]); their owners validate them.
    extra: Dict[str, Any] = field(default_factory=dict)
    #: The [deadline] and [fallback] tables as read: deadline/options.py and decide/fallback.py own their other keys.
    raw_tables: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def budget_ns(self) -> int:
        return int(round(self.budget_ms * 1e6))

    def action_for(self, index: int) -> Action:
        """The action the model's output index ``index`` stands for."""
        return self.labels[index] if self.labels else index

    def check_hash(self, sha256: str) -> None:
        """Refuse a model file whose hash is not the spec's (checked before any native code reads the file)."""
        if self.sha256 is not None and self.sha256.lower() != sha256:
            raise SpecError(f"{self.spec_path or self.model_path}: model {self.model_path.name} has sha256 {sha256}, "
                            f"but the spec expects {self.sha256}; the model file changed — re-run the training "
                            "script or update [model].sha256 if the new model is intended")

    def check_against(self, window: int, channels: int, output_size: int, sha256: str) -> None:
        """Refuse a spec that disagrees with the model it names."""
        where = self.spec_path or self.model_path
        self.check_hash(sha256)
        if window != self.window:
            raise SpecError(f"{where}: [input].window is {self.window} but the model's input takes {window} frames")
        if channels != len(self.channels):
            raise SpecError(f"{where}: [input].channels names {len(self.channels)} channels but the model's "
                            f"input takes {channels}")
        if self.labels is not None and len(self.labels) != output_size:
            raise SpecError(f"{where}: [output] names {len(self.labels)} outputs but the model has {output_size}")


def load_spec(path: "str | Path", data: Optional[bytes] = None) -> ModelSpec:
    """Parse and validate a spec file (not yet against its model: see :meth:`ModelSpec.check_against`).

    ``data``: the spec's bytes if already read (a verified bundle's); relative paths still resolve from ``path``.
    """
    path = Path(path)
    doc = read_toml(path, "spec", SpecError, data=data)
    return _SpecParser(path, doc).parse()


class _SpecParser:
    """Turns a TOML document into a ModelSpec, naming the key of every problem."""

    def __init__(self, path: Path, doc: Dict[str, Any]):
        self.path = path
        self.doc = doc

    def fail(self, key: str, problem: str) -> SpecError:
        return SpecError(f"spec {self.path}: {key} {problem}")

    def table(self, name: str, required: bool = True) -> Dict[str, Any]:
        value = self.doc.get(name)
        if value is None:
            if required:
                raise self.fail(f"[{name}]", "is missing")
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"[{name}]", "must be a table")
        unknown = sorted(set(value) - set(_SCHEMA[name]))
        if unknown:
            raise self.fail(f"[{name}].{unknown[0]}", f"is not a known key (known: {', '.join(_SCHEMA[name])})")
        return value

    def get(self, table: Dict[str, Any], section: str, key: str, kind: Any, default: Any = ...) -> Any:
        if key not in table:
            if default is ...:
                raise self.fail(f"[{section}].{key}", "is missing")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(f"[{section}].{key}", f"must be {names}, not {value!r}")
        return value

    def parse(self) -> ModelSpec:
        extra = {k: v for k, v in self.doc.items() if k not in _SCHEMA}
        model = self.table("model")
        inp = self.table("input")
        out = self.table("output")
        decision = self.table("decision", required=False)
        deadline = self.table("deadline", required=False)
        fallback = self.table("fallback")
        channels = self._names(inp, "input", "channels")
        spec = ModelSpec(
            model_path=(self.path.parent / self.get(model, "model", "file", str)).resolve(),
            name=self.get(model, "model", "name", str, ""),
            version=self.get(model, "model", "version", str, ""),
            description=self.get(model, "model", "description", str, ""),
            sha256=self._sha256(model),
            channels=channels,
            sample_rate_hz=self.number(inp, "input", "sample_rate_hz", values.RATE_HZ, None),
            window=self.number(inp, "input", "window", values.count(1)),
            hop=self.number(inp, "input", "hop", values.count(1)),
            offset=self._vector(inp, "offset", len(channels), 0.0),
            scale=self._vector(inp, "scale", len(channels), 1.0),
            budget_ms=self.number(deadline, "deadline", "budget_ms", values.MILLISECONDS, DEFAULT_BUDGET_MS),
            fallback_action=self.get(fallback, "fallback", "action", (str, int)),
            spec_path=self.path,
            extra=extra,
            raw_tables={"deadline": deadline, "fallback": fallback},
        )
        self._output(out, spec)
        self._decision(decision, spec)
        parse_checks(spec)  # [checks], [ood]: wrong keys fail at load, not when the loop starts
        return spec

    def _sha256(self, model: Dict[str, Any]) -> Optional[str]:
        digest = self.get(model, "model", "sha256", str, None)
        if digest is not None and (len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest)):
            raise self.fail("[model].sha256", "must be 64 hex digits (sha256sum of the model file)")
        return digest

    def _names(self, table: Dict[str, Any], section: str, key: str) -> List[str]:
        names = self.get(table, section, key, list)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise self.fail(f"[{section}].{key}", "must be a non-empty list of non-empty strings")
        if len(set(names)) != len(names):
            raise self.fail(f"[{section}].{key}", "has duplicate names")
        return names

    def number(self, table: Dict[str, Any], section: str, key: str, rule: values.Number, default: Any = ...) -> Any:
        """``[section].key`` checked by ``rule`` (:mod:`edge_infer.settings.values`), or ``default`` if absent."""
        if key not in table:
            if default is ...:
                raise self.fail(f"[{section}].{key}", "is missing")
            return default
        try:
            return rule.check(table[key])
        except values.ValueProblem as exc:
            raise self.fail(f"[{section}].{key}", str(exc)) from None

    def _vector(self, table: Dict[str, Any], key: str, size: int, default: float) -> np.ndarray:
        if key not in table:
            return np.full(size, default, dtype=np.float32)
        numbers = self.get(table, "input", key, list)
        if len(numbers) != size or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise self.fail(f"[input].{key}", f"must be a list of {size} numbers, one per channel")
        vector = np.array(numbers, dtype=np.float32)
        if not np.all(np.isfinite(vector)):  # also a value too large for float32
            raise self.fail(f"[input].{key}", "must be finite for every channel")
        if key == "scale" and np.any(vector == 0):
            raise self.fail("[input].scale", "must be finite and non-zero for every channel")
        return vector

    def _output(self, out: Dict[str, Any], spec: ModelSpec) -> None:
        kind = self.get(out, "output", "kind", str)
        if kind not in OUTPUT_KINDS:
            raise self.fail("[output].kind", f"must be one of {', '.join(OUTPUT_KINDS)}, not {kind!r}")
        key = "labels" if kind == "classes" else "names"
        spec.output_kind = kind
        spec.labels = self._names(out, "output", key)

    def _decision(self, decision: Dict[str, Any], spec: ModelSpec) -> None:
        rule = self.get(decision, "decision", "rule", str, "argmax")
        if rule not in DECISION_RULES:
            raise self.fail("[decision].rule", f"must be one of {', '.join(DECISION_RULES)}, not {rule!r}")
        spec.min_confidence = self.number(decision, "decision", "min_confidence", values.FRACTION, 0.0)


def spec_for_bare_model(model_path: "str | Path", window: int, channels: List[str], hop: Optional[int],
                        budget_ms: Optional[float], fallback: Optional[Action]) -> ModelSpec:
    """A spec for a .tflite with none: shape from the model, channels from the log, the rest from flags."""
    return ModelSpec(
        model_path=Path(model_path).resolve(),
        channels=list(channels),
        window=window,
        hop=hop or window,
        budget_ms=budget_ms or DEFAULT_BUDGET_MS,
        fallback_action=BARE_FALLBACK if fallback is None else fallback,
        name=Path(model_path).stem,
        offset=np.zeros(len(channels), dtype=np.float32),
        scale=np.ones(len(channels), dtype=np.float32),
    )
