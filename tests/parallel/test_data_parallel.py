"""Data parallel 2 x tensor parallel 2: two engine replicas on disjoint device pairs serve concurrent
requests, balanced by load, each exactly as a single-device engine would (`workers/dp_run.py`)."""

from __future__ import annotations

from pathlib import Path

from tests.parallel.checkpoints import write_family_checkpoint
from tests.parallel.run_worker import run_worker


def test_two_replicas_of_two_devices_serve_concurrent_requests(tmp_path: Path) -> None:
    checkpoint = write_family_checkpoint("llama", tmp_path / "llama")
    report = run_worker("dp_run", checkpoint, out=tmp_path / "dp.json")
    first, second = report["replica_devices"]
    assert len(first) == len(second) == 2 and not set(first) & set(second)
    assert all(peak >= 2 for peak in report["peak_in_flight"]), "load balancing left a replica idle"
    assert report["tokens"] == report["expected"]
    assert all(len(tokens) == 5 for tokens in report["tokens"])
