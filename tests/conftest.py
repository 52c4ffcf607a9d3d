"""Suite-wide settings: one cache folder per run (warm model cache and JAX's persistent compile cache),
removed when the run ends unless the caller chose it (each run's folder holds ~0.5 GB)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_OWN_CACHE = None if "TPUSERVE_CACHE" in os.environ else tempfile.mkdtemp(prefix="tpuserve-test-cache-")
if _OWN_CACHE:
    os.environ["TPUSERVE_CACHE"] = _OWN_CACHE

# The end-to-end API fixtures (one real server per session) are shared with tests/test_readme.py.
pytest_plugins = ("tests.serving.api.fixtures",)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
