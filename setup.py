"""Build hook (all metadata is in pyproject.toml): ship the top-level `kernels/` folder as
`tokenrl/kernels/` in wheels and sdists.

The folder has no `__init__.py` on purpose (`kernels` is also the import name of the Hugging Face
kernel-hub distribution that transformers imports; see tokenrl/kernels/__init__.py), so it is not
a package setuptools can map; instead `build_py` lists its modules as modules of `tokenrl.kernels`.
The same listing feeds the sdist's file list and a strict editable install's link tree; a default
(lenient) editable install needs nothing: tokenrl/kernels/__init__.py finds the folder itself.
"""
import glob
import os

from setuptools import setup
from setuptools.command.build_py import build_py

KERNELS_DIR = "kernels"  # relative to this file, the repo root (setuptools builds from there)


class BuildPyWithKernels(build_py):
  """`build_py` that adds `kernels/*.py` to the package `tokenrl.kernels`."""

  def find_package_modules(self, package, package_dir):
    modules = super().find_package_modules(package, package_dir)
    if package == "tokenrl.kernels":
      for path in sorted(glob.glob(os.path.join(KERNELS_DIR, "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name == "__init__":
          raise ValueError(f"{path} must not exist: it makes the top-level `kernels/` a regular "
                           "package that shadows the `kernels` distribution; the package file "
                           "is tokenrl/kernels/__init__.py")
        modules.append((package, name, path))
    return modules


setup(cmdclass={"build_py": BuildPyWithKernels})
