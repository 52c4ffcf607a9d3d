"""Suite-wide settings: one cache folder per run (warm model cache and JAX's persistent compile cache)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TPUSERVE_CACHE", tempfile.mkdtemp(prefix="tpuserve-test-cache-"))

# The end-to-end API fixtures (one real server per session) are shared with tests/test_readme.py.
pytest_plugins = ("tests.serving.api.fixtures",)
