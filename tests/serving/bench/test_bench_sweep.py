"""`bench sweep` against the fake server, and `--plot` with or without matplotlib installed."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from tests.serving.bench.fake_server import Script, serving
from tpuserve.serving.bench.sweep import COLUMNS
from tpuserve.serving.cli.main import main

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def sweep_args(url: str, tokenizer_dir: Path, *extra: str) -> list[str]:
    return ["bench", "sweep", "--base-url", url, "--tokenizer", str(tokenizer_dir), "--disable-tqdm",
            "--random-input-len", "4", "--random-output-len", "3", *extra]


def test_sweep_reports_one_row_per_concurrency(tokenizer_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep.json"
    with serving(Script(first_delay=0.02, gap=0.01)) as (url, recorder):
        code = main(sweep_args(url, tokenizer_dir, "--concurrency", "1", "3", "--result-json", str(out)))
    assert code == 0
    rows = json.loads(out.read_text())
    assert [row["max_concurrency"] for row in rows] == [1, 3]
    assert [row["completed"] for row in rows] == [4, 12]  # 4 prompts per concurrency slot by default
    assert recorder.peak_in_flight == 3
    for row in rows:
        assert row["failed"] == 0
        assert all(math.isfinite(row[key]) for key, _, _ in COLUMNS)
    table = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(table) if "out tok/s" in line)
    assert [line.split()[0] for line in table[header + 1: header + 3]] == ["1", "3"]


@pytest.mark.skipif(HAS_MATPLOTLIB, reason="checks the message shown when matplotlib is missing")
def test_plot_without_matplotlib_is_one_clear_error(tokenizer_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    with serving(Script(first_delay=0.01, gap=0.01)) as (url, _):
        code = main(sweep_args(url, tokenizer_dir, "--concurrency", "1", "--num-prompts", "1",
                               "--plot", str(tmp_path / "sweep.png")))
    assert code == 1
    assert capsys.readouterr().err.strip() == "error: --plot needs matplotlib: pip install matplotlib"


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is an optional dependency")
def test_plots_are_png_files(tokenizer_dir: Path, tmp_path: Path) -> None:
    with serving(Script(first_delay=0.01, gap=0.01)) as (url, _):
        assert main(sweep_args(url, tokenizer_dir, "--concurrency", "1", "2", "--num-prompts", "2",
                               "--plot", str(tmp_path / "sweep.png"))) == 0
        serve = ["bench", "serve", "--base-url", url, "--tokenizer", str(tokenizer_dir), "--disable-tqdm",
                 "--num-prompts", "3", "--random-input-len", "4", "--random-output-len", "3",
                 "--plot", str(tmp_path / "run")]
        assert main(serve) == 0
    for name in ("sweep.png", "run_latency_cdf.png", "run_throughput.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
