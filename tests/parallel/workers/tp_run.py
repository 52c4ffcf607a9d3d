"""Worker: load checkpoints at several tensor-parallel sizes and report what each produced, as JSON.

Run as `python -m tests.parallel.workers.tp_run NAME CHECKPOINT TP[,TP...] [NAME CHECKPOINT TP...] OUT.json`
in a process whose XLA_FLAGS fake enough CPU devices; one process serves all cases, as each start costs
seconds of imports. The parent test compares the sizes and checks the reported shardings. Size 1 loads
without a mesh: the single-device engine. Dense logits go beside OUT, in OUT with suffix `.npz` (key
`NAME/TP`), as JSON would be large and slow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tpuserve.model import LoadedModel, ModelConfig, load_model, resolve_checkpoint
from tpuserve.model.loading import read_hf_config
from tpuserve.model.sharding import make_mesh
from tpuserve.serving import LLM, SamplingParams
from tpuserve.serving.worker.compilation import compilation_count

# One token bucket: these tests are about splitting, and every bucket is compiled once per mesh.
ENGINE = {"max_model_len": 128, "max_num_seqs": 8, "max_num_batched_tokens": 16, "page_size": 16,
          "num_pages": 48, "min_token_bucket": 16}
PROMPT_LENS = (3, 17, 29)
MAX_TOKENS = 6


def layout(array: jax.Array) -> dict[str, Any]:
    """The array's PartitionSpec (padded to its rank; None when on one device) and one shard's shape."""
    sharding = array.sharding
    spec = None
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = list(sharding.spec) + [None] * (array.ndim - len(sharding.spec))
    shard = array.addressable_shards[0].data
    return {"spec": spec, "shape": list(array.shape), "shard_shape": list(shard.shape),
            "num_devices": len(sharding.device_set)}


@nnx.jit
def dense_logits(model: nnx.Module, token_ids: jax.Array) -> jax.Array:
    return model(token_ids)


def run(checkpoint: str, tp: int, prompts: list[list[int]],
        dense_ids: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    loaded: LoadedModel = load_model(checkpoint, "float32", mesh=make_mesh(tp) if tp > 1 else None)
    vocab = loaded.config.vocab_size
    params = {".".join(map(str, path)): layout(var.get_value())
              for path, var in nnx.to_flat_state(nnx.state(loaded.model))}
    logits = np.asarray(dense_logits(loaded.model, jnp.asarray(dense_ids)))[..., :vocab]
    llm = LLM(loaded, tensor_parallel_size=tp, use_tqdm=False, **ENGINE)
    before = compilation_count()
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=3),
                           use_tqdm=False)
    completions = [out.outputs[0] for out in outputs]
    return {
        "params": params,
        "kv_cache": layout(llm.engine.runner.kv_caches[0]),
        "served_kv_heads": loaded.model.config.num_kv_heads,
        "tokens": [c.token_ids for c in completions],
        "top_logprobs": [[sorted(lp.logprob for lp in step.values()) for step in c.logprobs]
                         for c in completions],
        "compiles_while_serving": compilation_count() - before,
    }, logits


def run_sizes(checkpoint: str, sizes: list[int]) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    vocab = ModelConfig.from_hf(read_hf_config(resolve_checkpoint(checkpoint))[0]).vocab_size
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, vocab, n).tolist() for n in PROMPT_LENS]
    dense_ids = rng.integers(0, vocab, (2, 24)).astype(np.int32)
    return {str(tp): run(checkpoint, tp, prompts, dense_ids) for tp in sizes}


def main() -> None:
    *cases, out = sys.argv[1:]
    reports, logits = {}, {}
    for name, checkpoint, sizes in zip(cases[::3], cases[1::3], cases[2::3], strict=True):
        runs = run_sizes(checkpoint, [int(s) for s in sizes.split(",")])
        reports[name] = {tp: report for tp, (report, _) in runs.items()}
        logits.update({f"{name}/{tp}": array for tp, (_, array) in runs.items()})
    np.savez(Path(out).with_suffix(".npz"), **logits)
    Path(out).write_text(json.dumps(reports))


if __name__ == "__main__":
    main()
