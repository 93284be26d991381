"""Build script: cythonizes the fast-path kernels in sfu/_fastpath/.

Package metadata lives in pyproject.toml; this file only declares the compiled extensions.
Set SFU_NO_EXTENSIONS=1 at *run* time to use the pure-Python references instead.
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

FASTPATH = Path("sfu") / "_fastpath"

# C libraries a kernel links against (the SRTP and lane kernels call OpenSSL libcrypto, from
# libssl-dev).
LIBRARIES: dict[str, list[str]] = {
    "_srtp": ["crypto"],
    "_lane": ["crypto"],
}

# Extra compiler flags per kernel: the estimator's kernel must do exactly the floating-point
# operations its reference does (no fused multiply-add), so the two agree bit for bit.
EXTRA_ARGS: dict[str, list[str]] = {
    "_bwe": ["-ffp-contract=off"],
    "_pacer": ["-ffp-contract=off"],
}

# The bench's compiled send/receive loops (``bench/_loadgen.pyx``) build beside the kernels.
SOURCES = sorted(FASTPATH.glob("*.pyx")) + sorted(Path("bench").glob("*.pyx"))
# SFU_BUILD_ONLY=_layers,_munger rebuilds just those modules (handy while editing one kernel).
ONLY = {name for name in os.environ.get("SFU_BUILD_ONLY", "").split(",") if name}

extensions = [
    Extension(
        ".".join(pyx.with_suffix("").parts),
        [str(pyx)],
        extra_compile_args=["-O3", *EXTRA_ARGS.get(pyx.stem, [])],
        libraries=LIBRARIES.get(pyx.stem, []),
    )
    for pyx in SOURCES
    if not ONLY or pyx.stem in ONLY
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
