"""Build script: cythonizes the fast-path kernels in sfu/_fastpath/.

Package metadata lives in pyproject.toml; this file only declares the compiled extensions.
Set SFU_NO_EXTENSIONS=1 at *run* time to use the pure-Python references instead.
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

FASTPATH = Path("sfu") / "_fastpath"

# C libraries a kernel links against (the SRTP kernel calls OpenSSL libcrypto, from libssl-dev).
LIBRARIES: dict[str, list[str]] = {"_srtp": ["crypto"]}

extensions = [
    Extension(
        f"sfu._fastpath.{pyx.stem}",
        [str(pyx)],
        extra_compile_args=["-O3"],
        libraries=LIBRARIES.get(pyx.stem, []),
    )
    for pyx in sorted(FASTPATH.glob("*.pyx"))
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
