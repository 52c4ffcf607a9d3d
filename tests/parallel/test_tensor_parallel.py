"""Tensor parallel sizes 2, 4 (3 for SmolLM2's 9 query / 3 KV heads) give the same model as size 1.

Each checkpoint runs once in a worker with 8 fake CPU devices (`workers/tp_run.py`); size 1 is the plain
single-device engine, the oracle. The SmolLM2-shaped one is converted to our Orbax format first, the path
the embedded model's warm cache takes, so a restore split over a mesh is checked too. Checked here: dense
logits and the engine's greedy tokens and top logprobs within 1e-4 of size 1, no compiles while serving,
and every parameter's and the KV cache's actual sharding against the Megatron layout written out
independently below.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.parallel.checkpoints import COMMON, FAMILIES, write_family_checkpoint
from tests.parallel.run_worker import run_worker
from tpuserve.kernels.ragged_paged_attention import kv_cache_spec
from tpuserve.model import load_model
from tpuserve.model.loading import save_converted

TOLERANCE = 1e-4
# parameter name ending -> (sharded axis or None, what that axis counts)
EXPECTED_AXIS: dict[str, int | None] = {
    "embedder.embedding": 0, "lm_head.kernel": 1, "qkv.kernel": 1, "qkv.bias": 0, "o.kernel": 0,
    "gate_up.kernel": 1, "down.kernel": 0, "o.bias": None, "scale": None,
}


# Each layout once per family feature, as every size costs a model load and an engine build (~8 s): KV heads
# split evenly (qwen3 at 2 and 4, gemma2's window and soft caps at 2) and replicated (llama's 2 KV heads and
# QKV bias at 4), and SmolLM2's head counts at 3.
CASES = {"llama": "1,4", "qwen3": "1,2,4", "gemma2": "1,2", "smollm2_heads": "1,3"}
Runs = tuple[dict[str, Any], dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """All cases in one worker: reports keyed by case and size, dense logits keyed `case/size`."""
    root = tmp_path_factory.mktemp("tp")
    args = []
    for name, sizes in CASES.items():
        checkpoint = write_family_checkpoint(name, root / name)
        if name == "smollm2_heads":
            checkpoint = save_converted(load_model(checkpoint, "float32"), root / f"{name}-orbax")
        args += [name, checkpoint, sizes]
    reports = run_worker("tp_run", *args, out=root / "tp.json")
    with np.load(root / "tp.npz") as logits:
        return reports, dict(logits)


def heads(name: str) -> tuple[int, int, int, int]:
    """(query heads, KV heads, head_dim, vocab) of a test checkpoint, from its HF config."""
    overrides = FAMILIES[name][2]
    return (overrides["num_attention_heads"], overrides["num_key_value_heads"], COMMON["head_dim"],
            overrides["vocab_size"])


def check_layout(name: str, tp: int, report: dict[str, Any]) -> None:
    num_heads, num_kv, head_dim, vocab = heads(name)
    kv_held = max(num_kv, tp)  # fewer KV heads than shards: each shard holds a copy
    assert report["served_kv_heads"] == kv_held
    padded_vocab = -(-vocab // tp) * tp
    for path, layout in report["params"].items():
        suffix = next(s for s in EXPECTED_AXIS if path.endswith(s))
        axis = EXPECTED_AXIS[suffix]
        assert layout["num_devices"] == tp, path
        if tp == 1:
            assert layout["spec"] is None and layout["shard_shape"] == layout["shape"], path
            continue
        expected = [None] * len(layout["shape"])
        if axis is not None:
            expected[axis] = "model"
        assert layout["spec"] == expected, path
        split = [n // tp if a == "model" else n for n, a in zip(layout["shape"], expected, strict=True)]
        assert layout["shard_shape"] == split, path
        if suffix == "qkv.kernel":
            assert layout["shape"][1] == (num_heads + 2 * kv_held) * head_dim
        if suffix in ("embedder.embedding", "lm_head.kernel"):
            assert layout["shape"][axis] == padded_vocab
    cache = report["kv_cache"]
    # Axis 2 holds the KV heads in every backend's layout: 2 * Hkv K/V slots (Pallas), Hkv blocks (XLA).
    head_slots = kv_cache_spec(1, 16, kv_held, head_dim, np.float32, backend="auto").shape[2]
    assert cache["shape"][2] == head_slots and cache["num_devices"] == tp
    if tp > 1:
        assert cache["spec"] == [None, None, "model", None]
        assert cache["shard_shape"][2] == head_slots // tp


def check_same_model(reference: dict[str, Any], report: dict[str, Any]) -> None:
    assert report["tokens"] == reference["tokens"]
    for ours, theirs in zip(report["top_logprobs"], reference["top_logprobs"], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
    assert report["compiles_while_serving"] == 0


@pytest.mark.parametrize("name", list(CASES))
def test_tensor_parallel_matches_single_device(name: str, runs: Runs) -> None:
    reports, logits = runs
    reference = reports[name]["1"]
    assert all(len(tokens) == 6 for tokens in reference["tokens"])
    assert list(reports[name]) == CASES[name].split(",")
    for tp, report in reports[name].items():
        check_layout(name, int(tp), report)
        check_same_model(reference, report)
        np.testing.assert_allclose(logits[f"{name}/{tp}"], logits[f"{name}/1"], atol=TOLERANCE, rtol=0)
