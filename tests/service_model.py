"""A small real model with a spec and a labelled log, for the service tests (config, metrics).

Built with the test model builder, so these tests do not depend on the bundled model's training.
"""

from pathlib import Path
from typing import Tuple

import numpy as np

from edge_infer.testing.tflite_builder import dense_model, write_model

CHANNELS = ["acc_x", "acc_y", "acc_z"]
LABELS = ["idle", "walk", "run"]

SPEC = """[model]
file = "svc.tflite"
name = "svc-test"
version = "1"
[input]
channels = ["acc_x", "acc_y", "acc_z"]
window = 16
hop = 4
[output]
kind = "classes"
labels = ["idle", "walk", "run"]
[deadline]
budget_ms = 50
[fallback]
action = "idle"
"""


def make_service_model(directory: Path, rows: int = 400) -> Tuple[Path, Path]:
    """Write ``svc.tflite``, ``svc.toml`` and ``svc.csv`` (10 Hz, labelled) into ``directory``."""
    write_model(directory / "svc.tflite", dense_model(16, len(CHANNELS), len(LABELS), dtype="int8", seed=5))
    spec = directory / "svc.toml"
    spec.write_text(SPEC)
    values = np.random.default_rng(11).normal(size=(rows, len(CHANNELS)))
    lines = ["t," + ",".join(CHANNELS) + ",label"]
    lines += [f"{i / 10:.1f}," + ",".join(f"{v:.4f}" for v in row) + f",{LABELS[(i // 50) % 3]}"
              for i, row in enumerate(values)]
    log = directory / "svc.csv"
    log.write_text("\n".join(lines) + "\n")
    return spec, log
