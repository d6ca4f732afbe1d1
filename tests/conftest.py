"""Shared fixtures: the bundled model and log, and small models built for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from hypothesis import settings

from edge_infer.sinks.jsonl import read_decisions

# The property tests draw their examples from a fixed seed, so that a change is never refused for an example
# that was simply never drawn before (a real bug, but not this change's). `pytest --hypothesis-profile explore`
# draws new ones: run it when touching what they check.
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("fixed")

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_SPEC = ROOT / "models" / "basic_motions" / "basic_motions.toml"
BUNDLED_LOG = ROOT / "models" / "basic_motions" / "basic_motions_test.csv"


def run_cli(*args: str, python: str = sys.executable, timeout: float = 300, env: dict = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m edge_infer ARGS`` from the repo root, as a user would."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT))
    full_env.update(env or {})
    proc = subprocess.run([python, "-m", "edge_infer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"edge-infer {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def read_jsonl(path: Path) -> List[dict]:
    """The decision records of the last run in a decision log (run_start lines skipped)."""
    return read_decisions(path)


@pytest.fixture(scope="session")
def bundled_spec() -> Path:
    return BUNDLED_SPEC


@pytest.fixture(scope="session")
def bundled_log() -> Path:
    return BUNDLED_LOG
