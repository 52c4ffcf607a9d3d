"""Two processes on localhost (2 CPU devices each, gloo collectives) serve one model split 4 ways:
process 0 takes concurrent requests through the async engine and broadcasts each step's engine calls,
process 1 follows; the tokens equal a plain single-process engine's and both processes exit cleanly."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.parallel.checkpoints import write_family_checkpoint
from tests.parallel.run_worker import finish, start_worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_model_split_over_two_processes_generates_as_one(tmp_path: Path) -> None:
    checkpoint = write_family_checkpoint("llama", tmp_path / "llama")
    coordinator = f"localhost:{free_port()}"
    processes = {role: start_worker("mh_run", role, checkpoint, tmp_path / f"{role}.json", coordinator,
                                    num_devices=2) for role in ("leader", "follower", "single")}
    try:
        for process in processes.values():
            finish(process)
    finally:  # a failed leader must not leave its follower waiting on a collective
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    leader, follower, single = (json.loads((tmp_path / f"{role}.json").read_text()) for role in processes)
    assert leader["devices"] == follower["devices"] == 4
    assert leader["local_devices"] == follower["local_devices"] == 2
    assert leader["tokens"] == single["tokens"]
    assert any(len(tokens) == 5 for tokens in single["tokens"])
