"""Offline A/B of synchronous and async scheduling on one engine, interleaved, in one process.

Usage: .venv/bin/python scripts/ab_async_scheduling.py [--model PATH] [--dtype bfloat16] [--batch 1]
       [--prompt-len 16] [--output-len 128] [--rounds 4]

This VM's speed drifts by a third from minute to minute, so the two modes alternate on the same compiled
engine (the flag is only read by `Engine.step`) and each round prints both; greedy, `ignore_eos`, random
token prompts, and every round checks that both modes generated the same tokens.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tpuserve.serving.llm import LLM
from tpuserve.serving.sampling_params import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the embedded SmolLM2)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    llm = LLM(args.model, args.dtype, max_num_seqs=max(8, args.batch), use_tqdm=False)
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": rng.integers(100, 40000, args.prompt_len).tolist()}
               for _ in range(args.batch)]
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=args.output_len)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for round_index in range(args.rounds):
        tokens = {}
        for mode in (False, True):
            object.__setattr__(llm.engine.config, "async_scheduling", mode)  # frozen for users, not here
            start = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            rates[mode].append(args.batch * args.output_len / (time.perf_counter() - start))
            tokens[mode] = [o.outputs[0].token_ids for o in outputs]
        print(f"round {round_index}: sync {rates[False][-1]:.1f}, async {rates[True][-1]:.1f} output tok/s; "
              f"same tokens: {tokens[False] == tokens[True]}", flush=True)
    print(f"median output tok/s: sync {np.median(rates[False]):.1f}, async {np.median(rates[True]):.1f}")


if __name__ == "__main__":
    main()
