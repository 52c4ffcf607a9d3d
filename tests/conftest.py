"""Suite-wide settings: one cache folder per run (warm model cache and JAX's persistent compile cache)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TPUSERVE_CACHE", tempfile.mkdtemp(prefix="tpuserve-test-cache-"))
