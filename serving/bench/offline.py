"""`tpuserve bench offline`: `LLM.generate` throughput without HTTP, vLLM's `bench throughput` recipe.

Every request ignores EOS and samples at temperature 1, so the engine does exactly the work the lengths
ask for. Buckets are compiled when the `LLM` is built, so the timed region holds generation only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tpuserve.serving.args import EngineArgs
from tpuserve.serving.bench import args as bench_args
from tpuserve.serving.bench.datasets import SampleRequest
from tpuserve.serving.llm import LLM
from tpuserve.serving.sampling_params import SamplingParams


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL", help="checkpoint (default: embedded SmolLM2)")
    EngineArgs.add_cli_args(parser)
    bench_args.add_dataset_arguments(parser, seed=False)
    parser.add_argument("--disable-tqdm", action="store_true")
    parser.add_argument("--result-json", type=Path, help="write the result JSON here")


def run(args: argparse.Namespace) -> int:
    llm = LLM.from_engine_args(EngineArgs.from_cli_args(args), use_tqdm=not args.disable_tqdm)
    requests = bench_args.sample_requests(args, llm.get_tokenizer(), args.num_prompts)
    result = benchmark_offline(llm, requests, progress=not args.disable_tqdm)
    print(f"Throughput: {result['requests_per_second']:.2f} requests/s, "
          f"{result['tokens_per_second']:.2f} total tokens/s, "
          f"{result['output_tokens_per_second']:.2f} output tokens/s")
    if args.result_json:
        args.result_json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.result_json}")
    return 0


def benchmark_offline(llm: LLM, requests: Sequence[SampleRequest], progress: bool = False) -> dict[str, Any]:
    """Time one `generate` over REQUESTS; keys as vLLM's throughput JSON plus the output-only rates."""
    params = [SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=r.expected_output_len)
              for r in requests]
    start = time.perf_counter()
    outputs = llm.generate([r.prompt for r in requests], params, use_tqdm=progress, add_special_tokens=False)
    elapsed = time.perf_counter() - start
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    output_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {
        "elapsed_time": elapsed,
        "num_requests": len(requests),
        "total_prompt_tokens": prompt_tokens,
        "total_output_tokens": output_tokens,
        "total_num_tokens": prompt_tokens + output_tokens,
        "requests_per_second": len(requests) / elapsed,
        "tokens_per_second": (prompt_tokens + output_tokens) / elapsed,
        "output_tokens_per_second": output_tokens / elapsed,
    }
