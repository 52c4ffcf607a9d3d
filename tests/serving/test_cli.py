"""`tpuserve info|convert|serve`, checked against transformers' own numbers and the console script itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from tests.model.tiny_checkpoint import CONFIG, hf_param_count, write_tiny_checkpoint
from tpuserve.model import CheckpointKind, resolve_checkpoint
from tpuserve.model.info import model_info
from tpuserve.serving.args import EngineArgs
from tpuserve.serving.cli.main import build_parser, main

TPUSERVE = Path(sys.executable).parent / "tpuserve"


def run_tpuserve(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script in a fresh process, with its own empty warm cache."""
    env = {**os.environ, "TPUSERVE_CACHE": str(cache)}
    return subprocess.run([str(TPUSERVE), *args], capture_output=True, text=True, env=env, timeout=300)


def info_fields(output: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in output.strip().splitlines())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=7)


def test_info_reports_the_checkpoint(tiny_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(tiny_dir)]) == 0
    fields = {key: value.strip() for key, value in info_fields(capsys.readouterr().out).items()}
    num_params = hf_param_count(tiny_dir)
    layers, kv_heads = CONFIG["num_hidden_layers"], CONFIG["num_key_value_heads"]
    head_dim = CONFIG["head_dim"]
    assert fields["family"] == "llama"
    assert fields["dtype"] == "float32"
    assert fields["parameters"].startswith(f"{num_params:,} ")
    assert (fields["layers"], fields["heads"], fields["kv heads"], fields["head dim"]) == (
        str(layers), str(CONFIG["num_attention_heads"]), str(kv_heads), str(head_dim))
    assert fields["context length"] == str(CONFIG["max_position_embeddings"])
    assert f"({num_params * 4:,} B)" in fields["params memory"]
    assert f"{2 * layers * kv_heads * head_dim * 4:,} B" in fields["KV per token"]


def test_info_on_the_default_model_counts_every_gguf_weight() -> None:
    """Shapes from the config alone must add up to the element count of the tensors in the file
    (SmolLM2 ties its LM head to the embedding, so both sides count that matrix once)."""
    path = resolve_checkpoint(None).path
    in_file = sum(int(tensor.n_elements) for tensor in gguf.GGUFReader(path).tensors)
    info = model_info(None, dtype="bfloat16")
    assert info.num_params == in_file
    assert info.param_bytes == 2 * in_file
    assert (info.family, info.num_layers, info.num_kv_heads) == ("llama", 30, 3)


def test_convert_writes_a_loadable_orbax_directory(tiny_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    dest = tmp_path / "tiny-bf16"
    assert main(["convert", str(tiny_dir), str(dest), "--dtype", "bfloat16"]) == 0
    assert str(dest) in capsys.readouterr().out
    assert resolve_checkpoint(dest).kind is CheckpointKind.ORBAX
    assert main(["info", str(dest)]) == 0
    fields = info_fields(capsys.readouterr().out)
    assert fields["dtype"].strip() == "bfloat16"
    assert fields["parameters"].strip().startswith(f"{hf_param_count(tiny_dir):,} ")
    assert main(["convert", str(tiny_dir), str(dest)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_info_on_a_missing_path_prints_one_line_without_traceback(tmp_path: Path) -> None:
    result = run_tpuserve("info", "/missing", cache=tmp_path)
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: /missing: no such file or directory")
    assert "Traceback" not in result.stdout + result.stderr


def test_serve_and_bench_offline_take_the_same_engine_flags() -> None:
    """Both commands' engine flags, `--num-pages` (vLLM's `--num-gpu-blocks-override`) among them, are
    `EngineArgs` fields, parsed alike."""
    flags = ["--num-pages", "17", "--kv-cache-memory", "1G", "--page-size", "32", "--min-token-bucket", "4",
             "--no-enable-prefix-caching", "--async-scheduling", "--dtype", "bfloat16"]
    parsed = [EngineArgs.from_cli_args(build_parser().parse_args([*command, *flags]))
              for command in (["serve"], ["bench", "offline"])]
    assert parsed[0] == parsed[1]
    engine = parsed[0]
    assert (engine.num_pages, engine.kv_cache_memory) == (17, 1 << 30)
    assert (engine.page_size, engine.min_token_bucket, engine.dtype) == (32, 4, "bfloat16")
    assert (engine.enable_prefix_caching, engine.async_scheduling) == (False, True)
    assert EngineArgs.from_cli_args(build_parser().parse_args(["serve"])) == EngineArgs()
