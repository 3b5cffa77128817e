"""Build declaration of the optional C extension deepseek._native (sources in native/src).

Everything else about the distribution lives in pyproject.toml. The extension is
optional: without a working C compiler the build warns and deepseek.native falls back
to numpy. Instruction sets are chosen at run time inside the extension (per-function
target attributes), so no -march flag is ever passed and the result runs on any CPU
of the architecture.
"""
import glob
import os
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -ffp-contract=off: no fused multiply-add contraction, so every instruction set and
# the numpy fallback round identically; -fno-math-errno lets sqrtf vectorise.
UNIX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fvisibility=hidden"]


class OptionalBuildExt(build_ext):
    """build_ext that adds the compiler flags and never fails the install."""

    def build_extensions(self):
        if self.compiler.compiler_type in ("unix", "mingw32", "cygwin"):
            for ext in self.extensions:
                ext.extra_compile_args = UNIX_FLAGS + list(ext.extra_compile_args or [])
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all, broken toolchain, ...
            warnings.warn(f"deepseek._native was not built ({exc}); "
                          "deepseek.native will use its numpy fallback")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            warnings.warn(f"deepseek._native failed to build ({exc}); "
                          "deepseek.native will use its numpy fallback")


def _packages():
    """Every package of the distribution under its ``deepseek.*`` name.

    The top-level folders are mapped into the namespace by ``package-dir`` in
    pyproject.toml; automatic discovery would name them by folder (``collectives``
    instead of ``deepseek.collectives``), so the list is built here from the mapping.
    """
    from setuptools import find_packages
    mapping = {"deepseek": "deepseek", "deepseek.collectives": "collectives",
               "deepseek.launcher": "launcher", "deepseek.elastic": "elastic",
               "deepseek.native": "native"}
    pkgs = []
    for name, folder in mapping.items():
        pkgs.append(name)
        pkgs += [f"{name}.{sub}" for sub in find_packages(folder)]
    return sorted(set(pkgs))


_src = os.path.join("native", "src")
setup(
    packages=_packages(),
    ext_modules=[
        Extension(
            "deepseek._native",
            sources=sorted(glob.glob(os.path.join(_src, "*.c"))),
            depends=sorted(glob.glob(os.path.join(_src, "*.h"))),
            include_dirs=[_src],
            libraries=["m"] if os.name == "posix" else [],  # erff / erf
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
