"""`bench offline` and `bench roofline` on a tiny random checkpoint: well-formed JSON whose counts and
ceilings follow from the inputs (never timed assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.model.tiny_checkpoint import hf_param_count, write_tiny_checkpoint
from tpuserve.serving.cli.main import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=11)


def test_offline_generates_exactly_the_requested_tokens(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "offline.json"
    num, input_len, output_len = 6, 8, 5
    code = main(["bench", "offline", str(tiny_dir), "--num-prompts", str(num), "--input-len", str(input_len),
                 "--output-len", str(output_len), "--max-model-len", "64", "--max-num-seqs", "4",
                 "--max-num-batched-tokens", "16", "--num-pages", "40", "--min-token-bucket", "16",
                 "--disable-tqdm",
                 "--result-json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    # ignore_eos: every request runs to its length; the word-level tokenizer round-trips prompts exactly.
    assert result["num_requests"] == num
    assert result["total_output_tokens"] == num * output_len
    assert result["total_prompt_tokens"] == num * input_len
    assert result["total_num_tokens"] == num * (input_len + output_len)
    assert result["elapsed_time"] > 0
    assert result["tokens_per_second"] == pytest.approx(result["total_num_tokens"] / result["elapsed_time"])
    assert result["output_tokens_per_second"] == pytest.approx(num * output_len / result["elapsed_time"])
    assert result["requests_per_second"] == pytest.approx(num / result["elapsed_time"])


def test_roofline_ceilings_follow_the_measurements(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "roofline.json"
    code = main(["bench", "roofline", str(tiny_dir), "--matmul-size", "128", "--bandwidth-mib", "4",
                 "--result-json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    params = hf_param_count(tiny_dir)
    assert result["num_params"] == params
    assert result["weight_bytes"] == 4 * params  # float32 on CPU
    assert set(result["matmul_flops"]) == {"float32", "bfloat16"}
    assert all(math.isfinite(f) and f > 0 for f in result["matmul_flops"].values())
    best = result["matmul_flops"][result["best_dtype"]]
    assert best == max(result["matmul_flops"].values())
    assert result["compute_ceiling_tok_s"] == pytest.approx(best / (2 * params))
    assert result["memory_ceiling_steps_s"] == pytest.approx(result["memory_bandwidth"] / (4 * params))
