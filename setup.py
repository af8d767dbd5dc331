"""Build one extension per ``src/eoscore/_native/*.pyx``.

Flags stay generic (-O3, no -march) so a wheel built here runs on any
x86-64 or aarch64 server.
"""

import os
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE = Path("src/eoscore/_native")

extensions = [
    Extension(
        f"eoscore._native.{pyx.stem}",
        [str(pyx)],
        include_dirs=[str(NATIVE), numpy.get_include()],
        extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted(NATIVE.glob("*.pyx"))
    # EOSCORE_ONLY=_hashing,_bloom builds just those (handy while iterating).
    if not os.environ.get("EOSCORE_ONLY") or pyx.stem in os.environ["EOSCORE_ONLY"].split(",")
]

# Both steps use every core: the wheel test and a fresh `make build` compile
# all modules, and -O3 C compiles are most of their time.
JOBS = os.cpu_count() or 1

setup(
    options={"build_ext": {"parallel": JOBS}},
    ext_modules=cythonize(
        extensions,
        nthreads=JOBS,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
