"""vLLM's `calculate_metrics`: the same formulas and JSON key names, so results compare one to one.

Over successful requests only: TPOT_i = (E2EL_i - TTFT_i) / (out_i - 1) for out_i > 1; ITL is every gap of
every request; throughputs divide by the whole run's wall time; a request is "good" when it meets every
given SLO (goodput, DistServe's definition). Statistics are numpy's (population std), reported in ms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from tpuserve.serving.bench.client import RequestResult
from tpuserve.serving.bench.errors import BenchError

METRICS = ("ttft", "tpot", "itl", "e2el", "ttft_content")
"""Latency metrics; `ttft_content` (first chunk carrying text, GuideLLM's TTFT) is ours, not vLLM's."""
DEFAULT_PERCENTILE_METRICS = ("ttft", "tpot", "itl")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(pairs: Sequence[str]) -> dict[str, float]:
    """`["ttft:500", "tpot:50"]` -> SLOs in milliseconds."""
    slos = {}
    for pair in pairs:
        name, _, value = pair.partition(":")
        try:
            slos[name] = float(value)
        except ValueError:
            raise BenchError(f"--goodput {pair!r}: expected KEY:MILLISECONDS, e.g. ttft:500") from None
        if name not in GOODPUT_METRICS or slos[name] < 0:
            keys = ", ".join(GOODPUT_METRICS)
            raise BenchError(f"--goodput {pair!r}: the key must be one of {keys}, the value >= 0")
    return slos


def parse_percentile_metrics(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if unknown := sorted(set(names) - set(METRICS)):
        raise BenchError(f"--percentile-metrics: unknown {', '.join(unknown)} (known: {', '.join(METRICS)})")
    return names


def parse_percentiles(text: str) -> list[float]:
    try:
        percentiles = [float(p) for p in text.split(",")]
    except ValueError:
        raise BenchError(f"--metric-percentiles {text!r}: expected numbers like 50,90,99") from None
    if not all(0 <= p <= 100 for p in percentiles):
        raise BenchError(f"--metric-percentiles {text!r}: percentiles lie in [0, 100]")
    return percentiles


def output_lengths(results: Sequence[RequestResult], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Server-reported completion tokens, else the tokenizer's count of the text (0 for failures)."""
    return [
        (r.output_tokens or len(tokenizer(r.generated_text, add_special_tokens=False).input_ids))
        if r.success else 0
        for r in results
    ]


def calculate_metrics(
    results: Sequence[RequestResult],
    duration: float,
    tokenizer: PreTrainedTokenizerBase,
    percentiles: Sequence[float] = (99.0,),
    percentile_metrics: Sequence[str] = DEFAULT_PERCENTILE_METRICS,
    goodput: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The aggregate part of vLLM's result JSON (ms latencies; `request_goodput` is None without SLOs)."""
    output_lens = output_lengths(results, tokenizer)
    done = [(r, n) for r, n in zip(results, output_lens, strict=True) if r.success]
    samples = {
        "ttft": [r.ttft for r, _ in done],
        "tpot": [(r.latency - r.ttft) / (n - 1) for r, n in done if n > 1],
        "itl": [gap for r, _ in done for gap in r.itl],
        "e2el": [r.latency for r, _ in done],
        "ttft_content": [r.ttft_content for r, _ in done],
    }
    total_input = sum(r.prompt_len for r, _ in done)
    total_output = sum(output_lens)
    peak_tokens, peak_requests = _peaks([r for r, _ in done])
    metrics: dict[str, Any] = {
        "duration": duration,
        "completed": len(done),
        "failed": len(results) - len(done),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(done) / duration,
        "request_goodput": _good_requests(done, goodput) / duration if goodput else None,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
        "max_output_tokens_per_s": peak_tokens,
        "max_concurrent_requests": peak_requests,
    }
    for name, values in samples.items():
        seconds = np.asarray(values or [0.0])
        metrics[f"mean_{name}_ms"] = float(np.mean(seconds)) * 1000
        metrics[f"median_{name}_ms"] = float(np.median(seconds)) * 1000
        metrics[f"std_{name}_ms"] = float(np.std(seconds)) * 1000
        if name in percentile_metrics:
            for p in percentiles:
                metrics[f"p{percentile_label(p)}_{name}_ms"] = float(np.percentile(seconds, p)) * 1000
    return metrics


def percentile_label(p: float) -> str:
    """vLLM's key spelling: 99 -> "99", 99.9 -> "99.9"."""
    return str(int(p)) if int(p) == p else str(p)


def _good_requests(done: Sequence[tuple[RequestResult, int]], slos: Mapping[str, float]) -> int:
    """Requests meeting every SLO; a request with one output token has TPOT 0 here (vLLM's rule)."""
    def values(r: RequestResult, n: int) -> dict[str, float]:
        tpot = (r.latency - r.ttft) / (n - 1) if n > 1 else 0.0
        return {"ttft": r.ttft, "tpot": tpot, "e2el": r.latency}
    return sum(all(values(r, n)[k] <= slo / 1000 for k, slo in slos.items()) for r, n in done)


def per_second(done: Sequence[RequestResult]) -> tuple[np.ndarray, np.ndarray]:
    """Chunks received and requests active in each 1-s bin from the first start (vLLM's peak metrics;
    chunk times are rebuilt as start + TTFT + cumulative ITL, so a chunk counts once, not per token)."""
    if not done:
        return np.zeros(0), np.zeros(0)
    start = min(r.start_time for r in done)
    bins = int(np.ceil(max(r.start_time + r.latency for r in done) - start)) + 1
    chunks, active = np.zeros(bins), np.zeros(bins)
    for r in done:
        arrivals = r.start_time + r.ttft + np.concatenate([[0.0], np.cumsum(r.itl)])
        np.add.at(chunks, (arrivals - start).astype(int).clip(0, bins - 1), 1)
        active[int(r.start_time - start): int(r.start_time + r.latency - start) + 1] += 1
    return chunks, active


def _peaks(done: Sequence[RequestResult]) -> tuple[float, int]:
    chunks, active = per_second(done)
    return (float(chunks.max()), int(active.max())) if len(chunks) else (0.0, 0)
