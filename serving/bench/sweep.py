"""`tpuserve bench sweep`: closed-loop runs at several concurrencies (1, 4, 16, 64 by default), reported as
a table and a throughput-vs-TPOT curve: the trade-off a continuous-batching server exists to improve."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from tpuserve.serving.bench import args as bench_args
from tpuserve.serving.bench.metrics import calculate_metrics
from tpuserve.serving.bench.plots import plot_sweep
from tpuserve.serving.bench.runner import first_model, run_load

DEFAULT_CONCURRENCY = (1, 4, 16, 64)
PROMPTS_PER_SLOT = 4
COLUMNS = (("max_concurrency", "conc", "d"), ("completed", "done", "d"), ("failed", "failed", "d"),
           ("request_throughput", "req/s", ".2f"), ("output_throughput", "out tok/s", ".1f"),
           ("mean_ttft_ms", "TTFT ms", ".1f"), ("mean_tpot_ms", "TPOT ms", ".1f"),
           ("p99_tpot_ms", "p99 TPOT", ".1f"), ("mean_itl_ms", "ITL ms", ".1f"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bench_args.add_target_arguments(parser)
    per_level = f"prompts per level (default {PROMPTS_PER_SLOT} x concurrency)"
    bench_args.add_dataset_arguments(parser, num_prompts=None, num_prompts_help=per_level)
    bench_args.add_sampling_arguments(parser)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_CONCURRENCY))
    parser.add_argument("--result-json", type=Path, help="write every level's metrics as a JSON list")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="throughput vs TPOT (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    rows = asyncio.run(sweep(args))
    print(table(rows))
    if args.result_json:
        args.result_json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.result_json}")
    if args.plot:
        plot_sweep(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


async def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One vLLM-style run per concurrency (request rate inf, so the cap alone sets the load)."""
    base_url, url = bench_args.target_urls(args)
    model = args.model or await first_model(base_url, args.ready_check_timeout_sec)
    tokenizer, _ = bench_args.tokenizer_for(args, model)
    rows = []
    for concurrency in args.concurrency:
        num_prompts = args.num_prompts or PROMPTS_PER_SLOT * concurrency
        requests = bench_args.sample_requests(args, tokenizer, num_prompts)
        config = bench_args.load_config(args, url, model, max_concurrency=concurrency)
        results, duration = await run_load(config, requests)
        rows.append({"max_concurrency": concurrency, "num_prompts": len(requests),
                     **calculate_metrics(results, duration, tokenizer)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    header = " ".join(f"{title:>10}" for _, title, _ in COLUMNS)
    lines = [f"{row[key]:>10{spec}}" for row in rows for key, _, spec in COLUMNS]
    width = len(COLUMNS)
    return "\n".join([header, *(" ".join(lines[i:i + width]) for i in range(0, len(lines), width))])

