"""The one native part: the deadline backstop (edge_infer/deadline/_backstop.c), built if a C compiler is there.

Everything else is in setup.cfg. The extension is optional: without a compiler (or with EDGE_INFER_PURE=1,
which scripts/check_aarch64.sh sets to build the pure wheel it resolves for ARM), edge-infer installs without
it and the Python watchdog alone keeps the deadlines (docs/deadlines.md, "The backstop").
"""

import os

from setuptools import Extension, setup

native = [] if os.environ.get("EDGE_INFER_PURE") == "1" else [
    Extension("edge_infer.deadline._backstop", ["edge_infer/deadline/_backstop.c"], optional=True,
              extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                                  "-Wno-cast-function-type"],
              extra_link_args=["-pthread"]),
]
setup(ext_modules=native)
