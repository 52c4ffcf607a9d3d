"""Offline `LLM.generate` throughput on random token prompts, with the per-step split that explains it.

Usage: .venv/bin/python scripts/bench_offline.py [--num-prompts 256] [--input-len 128] [--output-len 128]
           [--max-num-seqs 64] [--max-num-batched-tokens 512] [--page-size 16] [--dtype bfloat16]

Every request ignores EOS and decodes greedily, so the engine does exactly the work the lengths ask for (the
prompts are the same as `scripts/hf_generate_baseline.py`'s for the same seed). Buckets compile when the
`LLM` is built, outside the timed region. Besides vLLM's output and total token throughput it reports the
steady decode rate (steps that only decode, at full batch) and the engine's host gap per step: the time
the device waits for scheduling, input preparation and output processing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from tpuserve.model import load_model
from tpuserve.serving.llm import LLM
from tpuserve.serving.sampling_params import SamplingParams


def random_prompts(
    vocab_size: int, special_ids: list[int], num_prompts: int, length: int, seed: int
) -> list[list[int]]:
    """Uniform token ids over the vocabulary minus special tokens (no BOS/EOS inside a prompt)."""
    special = set(special_ids)
    allowed = np.array([t for t in range(vocab_size) if t not in special])
    rng = np.random.default_rng(seed)
    return [rng.choice(allowed, length).tolist() for _ in range(num_prompts)]


class StepTimer:
    """Wraps `engine.step` to record each step's wall time and scheduled token count."""

    def __init__(self, llm: LLM) -> None:
        self.engine = llm.engine
        self.steps: list[tuple[int, float]] = []
        self._step = self.engine.step
        self.engine.step = self._timed_step

    def _timed_step(self) -> list:
        tokens_before = self.engine.stats.num_batched_tokens
        start = time.perf_counter()
        outputs = self._step()
        self.steps.append((self.engine.stats.num_batched_tokens - tokens_before, time.perf_counter() - start))
        return outputs


def run(args: argparse.Namespace) -> dict[str, float | int | str]:
    loaded = load_model(None, args.dtype)
    prompts = random_prompts(loaded.config.vocab_size, loaded.tokenizer.all_special_ids, args.num_prompts,
                             args.input_len, args.seed)
    start = time.perf_counter()
    llm = LLM(loaded, max_model_len=args.input_len + args.output_len, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, page_size=args.page_size, use_tqdm=False)
    compile_s = time.perf_counter() - start
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, temperature=0.0)
    timer = StepTimer(llm)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    duration = time.perf_counter() - start
    num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
    full_decode = [t for n, t in timer.steps if n == args.max_num_seqs]
    stats = llm.engine.stats
    return {
        "dtype": str(loaded.dtype), "num_prompts": args.num_prompts, "input_len": args.input_len,
        "output_len": args.output_len, "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens, "page_size": args.page_size,
        "compile_s": round(compile_s, 1), "duration_s": round(duration, 2),
        "output_tok_s": round(num_out / duration, 1),
        "total_tok_s": round((num_out + args.num_prompts * args.input_len) / duration, 1),
        "steps": stats.num_steps, "host_gap_ms_per_step": round(stats.host_gap_per_step_s * 1e3, 2),
        "full_decode_steps": len(full_decode),
        "full_decode_step_ms_median": round(statistics.median(full_decode) * 1e3, 1) if full_decode else 0,
        "decode_tok_s": round(args.max_num_seqs / statistics.median(full_decode), 1) if full_decode else 0,
        "load_avg_1min": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
