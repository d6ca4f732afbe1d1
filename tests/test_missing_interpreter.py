"""Where no interpreter package could be installed, edge-infer says in one line which one to get, and how.

setup.cfg asks for an interpreter only where the package index has a wheel for it (so `pip install .`
resolves everywhere: scripts/check_aarch64.sh proves it under emulation); these tests stand in for a
machine that got none by making every backend module unimportable in the process that runs the real CLI.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from conftest import BUNDLED_LOG, BUNDLED_SPEC, ROOT
from test_cli_errors import assert_one_line_error

from edge_infer.model.backends import BACKENDS, missing_interpreter_hint

#: The CLI with every backend's top module blocked (None in sys.modules: importing it raises ModuleNotFoundError).
NO_BACKEND = ("import sys\n"
              + "".join(f"sys.modules[{b.module.split('.')[0]!r}] = None\n" for b in BACKENDS.values())
              + "from edge_infer.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def run_without_backends(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_BACKEND, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_replay_without_any_interpreter_names_the_one_to_install_in_one_line():
    proc = run_without_backends("replay", str(BUNDLED_LOG), "--model", str(BUNDLED_SPEC))
    here = f"{platform.machine()} with Python {sys.version_info[0]}.{sys.version_info[1]}"
    assert_one_line_error(proc, "no TFLite interpreter is installed", here,
                          missing_interpreter_hint(platform.machine(), sys.version_info[:2]))
    assert proc.stdout == ""


def test_inspect_without_any_interpreter_says_the_same():
    proc = run_without_backends("inspect", str(BUNDLED_SPEC))
    assert_one_line_error(proc, "no TFLite interpreter is installed")


@pytest.mark.parametrize("machine, python, says", [
    ("x86_64", (3, 11), 'pip install ai-edge-litert'),
    ("aarch64", (3, 14), 'pip install ai-edge-litert'),
    ("armv7l", (3, 9), 'pip install tflite-runtime "numpy<2"'),
    ("armv7l", (3, 11), 'pip install tflite-runtime "numpy<2"'),
    ("armv7l", (3, 13), "tflite-runtime has wheels for armv7l only up to Python 3.11"),
    ("aarch64", (3, 15), "ai-edge-litert has wheels up to Python 3.14"),
    ("riscv64", (3, 12), "neither ai-edge-litert nor tflite-runtime has wheels for this machine"),
])
def test_the_hint_follows_the_machine_and_python(machine, python, says):
    hint = missing_interpreter_hint(machine, python)
    assert says in hint and f"({machine} with Python {python[0]}.{python[1]})" in hint
    assert "\n" not in hint


def interpreter_requirements(machine: str, python: "tuple[int, int]") -> set:
    """The interpreter packages setup.cfg's install_requires asks for on ``machine`` with ``python``."""
    import configparser

    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line for line in config["options"]["install_requires"].splitlines()
             if line.strip() and not line.strip().startswith("#")]
    env = {"platform_machine": machine, "python_version": f"{python[0]}.{python[1]}",
           "python_full_version": f"{python[0]}.{python[1]}.0", "sys_platform": "linux"}
    wanted = set()
    for line in lines:
        requirement = Requirement(line)
        if requirement.name in {b.distribution for b in BACKENDS.values()}:
            if requirement.marker is None or requirement.marker.evaluate(env):
                wanted.add(requirement.name)
    return wanted


@pytest.mark.parametrize("machine", ["x86_64", "aarch64", "armv7l", "riscv64"])
@pytest.mark.parametrize("python", [(3, 9), (3, 11), (3, 12), (3, 14), (3, 15)])
def test_setup_cfg_installs_exactly_the_interpreter_the_hint_names(machine, python):
    """One rule in two places (setup.cfg's markers, the hint): they must agree on every machine and Python."""
    hint = missing_interpreter_hint(machine, python)
    named = ({"ai-edge-litert"} if "; install LiteRT:" in hint else
             {"tflite-runtime"} if "; install tflite-runtime:" in hint else set())
    assert interpreter_requirements(machine, python) == named
