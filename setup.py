"""Build script: the package is pure Python; `cascade_kernels._C` (csrc/, pybind11) is optional.

CASCADE_KERNELS_NO_EXT=1        skip the extension
CASCADE_KERNELS_STRICT_BUILD=1  a failed extension build is an error (default: warn, install anyway)
"""
import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

STRICT = os.environ.get("CASCADE_KERNELS_STRICT_BUILD") == "1"
SKIP = os.environ.get("CASCADE_KERNELS_NO_EXT") == "1"


def _extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if SKIP or not sources:
        return []
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        if STRICT:
            raise
        print("cascade_kernels: pybind11 missing, building without the C++ backend", file=sys.stderr)
        return []
    return [
        Pybind11Extension(
            "cascade_kernels._C",
            sources,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno"],
            extra_link_args=["-fopenmp"],
        )
    ]


class OptionalBuildExt(build_ext):
    """Builds the extension when it can; a failure only warns unless the build is strict."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing, headers missing, ...
            self._fail(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc):
        if STRICT:
            raise exc
        print(f"cascade_kernels: C++ extension not built ({exc}); the reference backend serves the CPU",
              file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
