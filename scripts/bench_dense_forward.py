"""Load times and dense-forward throughput (default: the embedded SmolLM2): numbers for docs/performance.md.

Loads MODEL from its source format with an empty temporary cache (for the default model: the cold GGUF
path), converts it to Orbax and loads that (the warm path), then times the jitted dense forward
`int32[B, T] -> logits[B, T, V]` per batch size, compilation apart from the steady state (median of --iters).

    .venv/bin/python scripts/bench_dense_forward.py --batch-sizes 1 32 --seq-len 128 --iters 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from tpuserve.model import LoadedModel, Transformer, load_model
from tpuserve.model.loading import save_converted


@dataclass(frozen=True)
class ForwardTiming:
    batch: int
    seq_len: int
    compile_s: float
    step_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.seq_len / self.step_s


def time_loads(model: str | None, dtype: str | None) -> tuple[float, float, LoadedModel]:
    """Seconds to load MODEL from its own format and from its Orbax conversion, in one process."""
    with tempfile.TemporaryDirectory(prefix="tpuserve-bench-") as tmp:
        os.environ["TPUSERVE_CACHE"] = tmp
        start = time.perf_counter()
        loaded = load_model(model, dtype)
        source_s = time.perf_counter() - start
        converted = save_converted(loaded, Path(tmp) / "converted")
        start = time.perf_counter()
        loaded = load_model(converted)
        orbax_s = time.perf_counter() - start
    return source_s, orbax_s, loaded


def time_forward(model: Transformer, batch: int, seq_len: int, iters: int, seed: int) -> ForwardTiming:
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state: nnx.State, tokens: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(tokens)

    rng = np.random.default_rng(seed)
    tokens = jax.device_put(rng.integers(0, model.config.vocab_size, (batch, seq_len), dtype=np.int32))
    start = time.perf_counter()
    compiled = forward.lower(state, tokens).compile()
    compile_s = time.perf_counter() - start
    compiled(state, tokens).block_until_ready()  # first run allocates; not steady state
    steps = []
    for _ in range(iters):
        start = time.perf_counter()
        compiled(state, tokens).block_until_ready()
        steps.append(time.perf_counter() - start)
    return ForwardTiming(batch, seq_len, compile_s, statistics.median(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint to load (default: the embedded SmolLM2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--dtype", default=None, help="parameter dtype (default: the platform's)")
    args = parser.parse_args()

    device = jax.devices()[0]
    print(f"jax {jax.__version__}, {device.platform} ({device.device_kind}), {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    source_s, orbax_s, loaded = time_loads(args.model, args.dtype)
    print(f"load {args.model or 'default model'} ({loaded.dtype.name}): from source {source_s:.2f} s, "
          f"from Orbax {orbax_s:.2f} s ({source_s / orbax_s:.1f}x)")
    print("| batch | seq len | compile (s) | step (s) | tokens/s |")
    print("|---|---|---|---|---|")
    for seed, batch in enumerate(args.batch_sizes):
        timing = time_forward(loaded.model, batch, args.seq_len, args.iters, seed)
        print(f"| {timing.batch} | {timing.seq_len} | {timing.compile_s:.2f} | {timing.step_s:.3f} "
              f"| {timing.tokens_per_s:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
