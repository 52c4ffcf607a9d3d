"""A static bound on Llama-3.1-8B step times per TPU generation, from the compiled programs' cost analysis.

Not a measurement: XLA's `cost_analysis()` of each program (flops, bytes accessed), AOT-compiled for
compile-only TPU devices on this host, against the chip's published peak bf16 rate and HBM bandwidth. The
bound on a step is max(flops / peak, bytes / bandwidth). Every decoder layer compiles alike, so each program
is compiled with one and with two layers and its cost extrapolated to 32 (`a + 31 b`); that keeps the
whole table to a few minutes. A step is the forward plus the LM head and sampler. The attention kernel is a
Mosaic call without a cost estimate, so XLA counts none of its KV reads: a decode step's bytes are compared
with the weights (a ratio above 1 is traffic beyond one pass over them), and the KV cache that must move
too (CONTEXT tokens per sequence) is shown beside it.

Usage (from the checkout root, with the tpu extra): .venv/bin/python -m scripts.tpu_step_estimate
           [--context 1024] [--generations v5e v5p v6e]
"""

from __future__ import annotations

import argparse

from tests.kernels.tpu_targets import GENERATIONS, compile_only_device
from tests.serving.tpu_programs import CompiledProgram, TpuPrograms, llama31_8b, tpu_engine_config

# Published per-chip peaks (Google Cloud TPU system architecture pages): bf16 FLOP/s, HBM bytes/s.
CHIP_PEAKS = {"v4": (275e12, 1200e9), "v5e": (197e12, 819e9), "v5p": (459e12, 2765e9),
              "v6e": (918e12, 1638e9)}
LAYERS = 32
STEPS = (("decode, 1 sequence", 16, 8), ("decode, 64 sequences", 64, 64), ("decode, 256 sequences", 256, 256),
         ("prefill, one 512-token chunk", 512, 8))  # (name, forward tokens T, sampled rows S)


def extrapolated(one: CompiledProgram, two: CompiledProgram) -> tuple[float, float]:
    """(flops, bytes) of the 32-layer program from its 1- and 2-layer compiles."""
    return tuple(first + (LAYERS - 1) * (second - first)
                 for first, second in ((one.flops, two.flops), (one.bytes_accessed, two.bytes_accessed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1024, help="tokens cached per decoding sequence")
    parser.add_argument("--generations", nargs="+", default=list(CHIP_PEAKS), choices=list(CHIP_PEAKS))
    args = parser.parse_args()
    config = llama31_8b()
    weight_bytes = 2 * (config.vocab_size * config.hidden_size * 2 + LAYERS * (
        config.hidden_size * (config.q_size + 2 * config.kv_size) + config.q_size * config.hidden_size
        + 3 * config.hidden_size * config.intermediate_size + 2 * config.hidden_size) + config.hidden_size)
    kv_bytes_per_token = LAYERS * 2 * config.kv_size * 2
    engine = tpu_engine_config(max_num_seqs=256, max_num_batched_tokens=512, max_model_len=8192)
    print(f"Llama-3.1-8B bf16: weights {weight_bytes / 1e9:.2f} GB, KV {kv_bytes_per_token / 1e3:.0f} kB a "
          f"token; decode context {args.context} tokens a sequence")
    print("| generation | step | GFLOP | GB accessed | bound (ms) | limited by | bytes / weights | KV GB |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for name in args.generations:
        generation = next(g for g in GENERATIONS if g.name == name)
        device = compile_only_device(generation)
        programs = [TpuPrograms(llama31_8b(layers), engine, [device]) for layers in (1, 2)]
        peak_flops, bandwidth = CHIP_PEAKS[name]
        for step, tokens, rows in STEPS:
            forward = extrapolated(*(p.forward(tokens) for p in programs))
            sample = programs[0].sample(rows, random=False)  # the LM head and sampler: no decoder layers
            flops, accessed = forward[0] + sample.flops, forward[1] + sample.bytes_accessed
            compute_s, memory_s = flops / peak_flops, accessed / bandwidth
            ratio = kv = ""
            if step.startswith("decode"):
                ratio = f"{accessed / weight_bytes:.2f}"
                kv = f"{int(step.split()[1]) * args.context * kv_bytes_per_token / 1e9:.2f}"
            limit = "compute" if compute_s > memory_s else "memory"
            print(f"| {name} | {step} | {flops / 1e9:,.0f} | {accessed / 1e9:.2f} | "
                  f"{max(compute_s, memory_s) * 1e3:.2f} | {limit} | {ratio} | {kv} |")


if __name__ == "__main__":
    main()
