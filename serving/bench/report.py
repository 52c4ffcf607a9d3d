"""The console summary in vLLM's layout, so a run reads like `vllm bench serve` output side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tpuserve.serving.bench.metrics import METRICS, percentile_label

WIDTH = 50
TITLES = {
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
    "ttft_content": ("TTFT-content", "Time to First Content Token"),
}


def serve_report(result: Mapping[str, Any], percentile_metrics: Sequence[str],
                 percentiles: Sequence[float]) -> str:
    lines = [" Serving Benchmark Result ".center(WIDTH, "="),
             _row("Successful requests:", result["completed"]), _row("Failed requests:", result["failed"])]
    if result.get("max_concurrency") is not None:
        lines.append(_row("Maximum request concurrency:", result["max_concurrency"]))
    if result.get("request_rate", "inf") != "inf":
        lines.append(_row("Request rate configured (RPS):", result["request_rate"]))
    lines += [
        _row("Benchmark duration (s):", result["duration"]),
        _row("Total input tokens:", result["total_input_tokens"]),
        _row("Total generated tokens:", result["total_output_tokens"]),
        _row("Request throughput (req/s):", result["request_throughput"]),
    ]
    if result["request_goodput"] is not None:
        lines.append(_row("Request goodput (req/s):", result["request_goodput"]))
    lines += [
        _row("Output token throughput (tok/s):", result["output_throughput"]),
        _row("Peak output token throughput (tok/s):", result["max_output_tokens_per_s"]),
        _row("Peak concurrent requests:", result["max_concurrent_requests"]),
        _row("Total token throughput (tok/s):", result["total_token_throughput"]),
    ]
    for name in METRICS:
        if name not in percentile_metrics:
            continue
        short, title = TITLES[name]
        lines += [title.center(WIDTH, "-"), _row(f"Mean {short} (ms):", result[f"mean_{name}_ms"]),
                  _row(f"Median {short} (ms):", result[f"median_{name}_ms"])]
        lines += [_row(f"P{percentile_label(p)} {short} (ms):", result[f"p{percentile_label(p)}_{name}_ms"])
                  for p in percentiles]
    return "\n".join([*lines, "=" * WIDTH])


def _row(label: str, value: float | int) -> str:
    return f"{label:<40} {value:<10.2f}" if isinstance(value, float) else f"{label:<40} {value:<10}"
