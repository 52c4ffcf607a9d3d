"""Lists the tpuserve.* subpackages; pyproject.toml maps each top folder under the `tpuserve` namespace."""

from setuptools import find_packages, setup

setup(packages=[f"tpuserve.{name}" for name in find_packages(include=["model*", "kernels*", "serving*"])])
