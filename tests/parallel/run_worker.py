"""Start a worker script under 8 fake CPU devices and read back its JSON report.

JAX fixes its device count when it is first imported, and the test process imported it long ago, so
every multi-device body runs in a fresh interpreter with XLA_FLAGS set from the start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NUM_DEVICES = 8


def device_env(num_devices: int = NUM_DEVICES) -> dict[str, str]:
    """This process's environment (the suite's TPUSERVE_CACHE included) with fake CPU devices."""
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}"}


def run_worker(module: str, *args: str | os.PathLike[str], out: Path, timeout: float = 600) -> dict[str, Any]:
    """`python -m tests.parallel.workers.MODULE ARGS... OUT`; a failing worker fails with its stderr."""
    command = [sys.executable, "-m", f"tests.parallel.workers.{module}", *map(str, args), str(out)]
    result = subprocess.run(command, cwd=REPO, env=device_env(), capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"worker {module} failed:\n{result.stderr[-4000:]}"
    return json.loads(out.read_text())
