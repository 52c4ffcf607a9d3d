"""`tpuserve bench serve`: vLLM's serving benchmark against any OpenAI-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

from tpuserve.serving.bench import args as bench_args
from tpuserve.serving.bench.metrics import (
    DEFAULT_PERCENTILE_METRICS,
    calculate_metrics,
    output_lengths,
    parse_goodput,
    parse_percentile_metrics,
    parse_percentiles,
)
from tpuserve.serving.bench.report import serve_report
from tpuserve.serving.bench.runner import first_model, run_load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bench_args.add_target_arguments(parser)
    bench_args.add_dataset_arguments(parser)
    bench_args.add_sampling_arguments(parser)
    load = parser.add_argument_group("load")
    load.add_argument("--request-rate", type=float, default=float("inf"),
                      help="requests/s (default inf: all sent at t=0)")
    load.add_argument("--burstiness", type=float, default=1.0, help="gamma shape: 1 Poisson, <1 burstier")
    load.add_argument("--max-concurrency", type=int, help="cap on requests in flight")
    load.add_argument("--num-warmups", type=int, default=0)
    out = parser.add_argument_group("results")
    out.add_argument("--percentile-metrics", default=",".join(DEFAULT_PERCENTILE_METRICS),
                     help="comma list of ttft,tpot,itl,e2el,ttft_content")
    out.add_argument("--metric-percentiles", default="99", help="comma list, e.g. 50,90,99")
    out.add_argument("--goodput", nargs="+", default=[], metavar="KEY:MS", help="SLOs, e.g. ttft:500 tpot:50")
    out.add_argument("--label", help="label stored in the result JSON (default: the backend)")
    out.add_argument("--result-json", type=Path, help="write vLLM's result JSON here")
    out.add_argument("--save-detailed", action="store_true", help="add per-request lists to the JSON")
    out.add_argument("--plot", type=Path, metavar="PREFIX",
                     help="write PREFIX_latency_cdf.png and PREFIX_throughput.png (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    result = asyncio.run(benchmark_serve(args))
    if args.result_json:
        args.result_json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.result_json}")
    return 0


async def benchmark_serve(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark ARGS describe; print vLLM's summary; return the result JSON as a dict."""
    percentile_metrics = parse_percentile_metrics(args.percentile_metrics)
    percentiles = parse_percentiles(args.metric_percentiles)
    goodput = parse_goodput(args.goodput)
    base_url, url = bench_args.target_urls(args)
    model = args.model or await first_model(base_url, args.ready_check_timeout_sec)
    tokenizer, tokenizer_id = bench_args.tokenizer_for(args, model)
    requests = bench_args.sample_requests(args, tokenizer, args.num_prompts)
    config = bench_args.load_config(args, url, model, request_rate=args.request_rate,
                                    burstiness=args.burstiness, max_concurrency=args.max_concurrency,
                                    num_warmups=args.num_warmups)
    results, duration = await run_load(config, requests)
    metrics = calculate_metrics(results, duration, tokenizer, percentiles, percentile_metrics, goodput)
    result = {
        "date": datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": args.backend,
        "backend": args.backend,
        "label": args.label or args.backend,
        "model_id": model,
        "tokenizer_id": tokenizer_id,
        "num_prompts": len(requests),
        "request_rate": "inf" if args.request_rate == float("inf") else args.request_rate,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        **metrics,
    }
    print(serve_report(result, percentile_metrics, percentiles))
    if args.plot:
        from tpuserve.serving.bench.plots import plot_serve

        for path in plot_serve(results, args.plot):
            print(f"wrote {path}")
    if args.save_detailed:  # vLLM's per-request lists
        result |= {
            "input_lens": [r.prompt_len for r in results],
            "output_lens": output_lengths(results, tokenizer),
            "ttfts": [r.ttft for r in results],
            "itls": [r.itl for r in results],
            "generated_texts": [r.generated_text for r in results],
            "errors": [r.error for r in results],
        }
    return result
