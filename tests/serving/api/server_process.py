"""Run the real `tpuserve serve` as a child process, the way a user would, for end-to-end tests.

The conformance suite must see exactly what clients see (argument parsing, start-up, uvicorn, SSE framing,
signals), so nothing here imports the app: the server is started with `python -m`, found through its
`/health` endpoint, and stopped with SIGTERM, whose exit status is part of the contract (a clean 0).
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tpuserve.serving.config import resolve_page_size

KV_POOL_TOKENS = 1024
ENGINE_CONFIG = {"max_model_len": 1024, "max_num_seqs": 16, "max_num_batched_tokens": 128,
                 "min_token_bucket": 16, "num_pages": 1 + KV_POOL_TOKENS // resolve_page_size(None)}
"""The suite's one set of SmolLM2 engine shapes (4 token and 2 sequence buckets), for the server and the
in-process engines alike (`tests.serving.engine_fixtures.make_llm`): compiled once in the server and once in
the test process, whose engines share their programs. The platform's page size (64 tokens on CPU) in a KV
pool of one full context (`KV_POOL_TOKENS`, the smallest that serves it, 17 pages with the null page on
CPU): concurrent long requests preempt one another, which the greedy-batch and async-scheduling tests
assert (a separate tight-pool shape compiled every program again, ~50 s)."""
ENGINE_ARGS = tuple(arg for key, value in ENGINE_CONFIG.items()
                    for arg in (f"--{key.replace('_', '-')}", str(value)))
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


class ServerStartError(RuntimeError):
    """The server exited or never became healthy; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class ServerProcess:
    """One `tpuserve serve` child; `base_url` is the root (no `/v1`), `log_path` holds its output.

    Without a `process` it stands for a server started elsewhere (see `attach`): nothing to stop.
    """

    base_url: str
    api_key: str | None
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @classmethod
    def start(cls, log_path: Path, *args: str, api_key: str | None = None,
              timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        """Start on a free port and return once `/health` answers 200 (after load and compile)."""
        server = cls.launch(log_path, *args, api_key=api_key)
        server.wait_healthy(timeout_s)
        return server

    @classmethod
    def launch(cls, log_path: Path, *args: str, api_key: str | None = None) -> ServerProcess:
        """Start on a free port without waiting: the caller goes on and calls `wait_healthy` when it
        needs the server."""
        port = free_port()
        command = [sys.executable, "-m", "tpuserve.serving.cli.main", "serve", *args,
                   "--host", "127.0.0.1", "--port", str(port)]
        if api_key is not None:
            command += ["--api-key", api_key]
        with log_path.open("w") as log:  # the environment, TPUSERVE_CACHE included, is inherited
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        return cls(f"http://127.0.0.1:{port}", api_key, process, log_path)

    @classmethod
    def attach(cls, base_url: str, api_key: str | None) -> ServerProcess:
        """A server that is already running (e.g. one left up while iterating on the tests)."""
        server = cls(base_url.rstrip("/"), api_key)
        server.wait_healthy(timeout_s=10.0)
        return server

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def is_alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(server started elsewhere: no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM, as a process manager would; returns the exit status (killed if it hangs)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Return once `/health` answers 200; stop the server and raise if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_alive():
                raise ServerStartError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(f"server not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")
