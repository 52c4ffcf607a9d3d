"""Lists the tpuserve.* subpackages; pyproject.toml maps each top folder under the `tpuserve` namespace.

`kernels/` has no `__init__.py` (a namespace portion), so a bare `import kernels` from the checkout root still
finds Hugging Face's installed `kernels` package; the namespace search lists it anyway.
"""

from setuptools import find_namespace_packages, setup

TOP_FOLDERS = ("model", "kernels", "serving")

setup(packages=[f"tpuserve.{name}" for name in find_namespace_packages(
    include=[pattern for top in TOP_FOLDERS for pattern in (top, f"{top}.*")], exclude=["*.__pycache__"])])
