"""The built wheel is complete and open-ranged: `pip install tpuserve` does not inherit the lock's pins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import tpuserve.serving

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Imports every module of the installed copy and prints where tpuserve.serving came from.
IMPORT_ALL = """
import importlib, pkgutil, tpuserve
for module in pkgutil.walk_packages(tpuserve.__path__, "tpuserve."):
    importlib.import_module(module.name)
import tpuserve.serving
print(tpuserve.serving.__file__)
"""


def test_wheel_is_complete_with_open_ranges(tmp_path: Path) -> None:
    # A copy: setuptools' build/ folder keeps files a later build no longer has, and they would ship.
    source = shutil.copytree(ROOT, tmp_path / "source", ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "__pycache__"))
    subprocess.run([BIN / "uv", "build", "--wheel", "--no-build-isolation", "-q", "-o", tmp_path, source],
                   check=True, timeout=300)
    (wheel,) = tmp_path.glob("tpuserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
        metadata = Parser().parsestr(archive.read(next(n for n in files if n.endswith(".dist-info/METADATA")))
                                     .decode())
    runtime = [req for req in metadata.get_all("Requires-Dist") if "extra ==" not in req]
    assert runtime and not [req for req in runtime if "==" in req], runtime
    sources = {f"tpuserve/{path.relative_to(ROOT)}" for top in ("model", "kernels", "serving")
               for path in (ROOT / top).rglob("*.py")}
    assert sources <= files, sorted(sources - files)

    site = tmp_path / "site"
    subprocess.run([BIN / "uv", "pip", "install", "-q", "--no-deps", "--target", site, wheel], check=True,
                   timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert Path(run.stdout.strip()).is_relative_to(site)
    assert Path(tpuserve.serving.__file__).is_relative_to(ROOT)  # this process runs the editable checkout
