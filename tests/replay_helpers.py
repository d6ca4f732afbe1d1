"""Logs and models for the recording, report and comparison tests (real .tflite files from the builder)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from edge_infer.testing.tflite_builder import dense_model

WINDOW, CHANNELS, CLASSES = 16, 3, 4
#: Fields of a decision record that do not depend on timing (latency and invoke time do).
DECISION_FIELDS = ("seq", "t", "action", "source", "reason", "output", "label")


def write_log(path: Path, rows: int, hz: float = 50.0, seed: int = 0, labels: bool = True) -> np.ndarray:
    """A CSV log of slowly drifting noise with class labels in runs of 100 rows; returns the values."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, CHANNELS)) + np.sin(np.arange(rows) / 40.0)[:, None] * [1.0, -0.5, 2.0]
    header = "t," + ",".join(f"c{i}" for i in range(CHANNELS)) + (",label" if labels else "")
    lines = [header] + [f"{i / hz:.3f}," + ",".join(f"{v:.5f}" for v in values[i])
                        + (f",{(i // 100) % CLASSES}" if labels else "") for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return values


def write_model(path: Path, seed: int) -> Path:
    path.write_bytes(dense_model(WINDOW, CHANNELS, CLASSES, dtype="int8", seed=seed))
    return path


def timing_free(records: List[Dict]) -> List[Dict]:
    return [{key: record[key] for key in DECISION_FIELDS} for record in records]


def write_spec(path: Path, model: Path, min_confidence: float = 0.0, fallback: str = "idle") -> Path:
    """A spec for a builder model: classes "0".."3" (the log's labels), a fallback action that is no class."""
    path.write_text(f"""
[model]
file = "{model.name}"
name = "{model.stem}"

[input]
channels = ["c0", "c1", "c2"]
window = {WINDOW}
hop = 4
sample_rate_hz = 50

[output]
kind = "classes"
labels = ["0", "1", "2", "3"]

[decision]
min_confidence = {min_confidence}

[deadline]
budget_ms = 5000

[fallback]
action = "{fallback}"
""")
    return path
