"""Start worker scripts under fake CPU devices and read back their JSON reports.

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
TIMEOUT = 900


def start_worker(module: str, *args: str | os.PathLike[str],
                 num_devices: int = NUM_DEVICES) -> subprocess.Popen:
    """`python -m tests.parallel.workers.MODULE ARGS...` with this environment (the suite's TPUSERVE_CACHE
    included) and NUM_DEVICES fake CPU devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}"}
    command = [sys.executable, "-m", f"tests.parallel.workers.{module}", *map(str, args)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(worker: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    """Wait for WORKER; a worker that fails or hangs fails the test with the end of its stderr."""
    try:
        _, stderr = worker.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, stderr = worker.communicate()
        raise AssertionError(f"worker {worker.args[2]} hung:\n{stderr[-4000:]}") from None
    assert worker.returncode == 0, f"worker {worker.args[2]} failed:\n{stderr[-4000:]}"


def run_worker(module: str, *args: str | os.PathLike[str], out: Path) -> dict[str, Any]:
    """Run one worker to completion; it writes its report to OUT, its last argument."""
    finish(start_worker(module, *args, out))
    return json.loads(out.read_text())
