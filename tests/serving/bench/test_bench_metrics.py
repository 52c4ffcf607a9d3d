"""`calculate_metrics` against an independent reference built on the `statistics` module and a
hand-written linear-interpolation percentile, over fresh random per-request timings."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from tpuserve.serving.bench.client import RequestResult
from tpuserve.serving.bench.errors import BenchError
from tpuserve.serving.bench.metrics import (
    calculate_metrics,
    parse_goodput,
    parse_percentile_metrics,
    parse_percentiles,
)


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default definition)."""
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def random_results(rng: np.random.Generator, num: int) -> list[RequestResult]:
    results = []
    for i in range(num):
        chunks = int(rng.integers(1, 8))
        ttft, itl = float(rng.uniform(0.01, 0.5)), rng.uniform(0.001, 0.05, chunks - 1).tolist()
        result = RequestResult(prompt_len=int(rng.integers(1, 100)), success=i % 5 != 3, ttft=ttft,
                               itl=itl, ttft_content=ttft, latency=ttft + sum(itl),
                               start_time=float(rng.uniform(0, 3)),
                               output_tokens=int(rng.integers(1, 3)) * chunks, generated_text="x")
        results.append(result)
    return results


def test_metrics_match_an_independent_reference(tokenizer) -> None:
    rng = np.random.default_rng()
    results = random_results(rng, 40)
    duration = float(rng.uniform(5, 10))
    slos = {"ttft": float(rng.uniform(100, 400)), "tpot": float(rng.uniform(5, 40))}
    percentiles = [50.0, 90.0, 99.0]
    chosen = ["ttft", "tpot", "itl", "e2el"]
    metrics = calculate_metrics(results, duration, tokenizer, percentiles, chosen, slos)

    done = [r for r in results if r.success]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    samples = {"ttft": [r.ttft for r in done], "tpot": tpots, "itl": [g for r in done for g in r.itl],
               "e2el": [r.latency for r in done]}
    total_output = sum(r.output_tokens for r in done)
    total_input = sum(r.prompt_len for r in done)
    assert (metrics["completed"], metrics["failed"]) == (len(done), len(results) - len(done))
    assert (metrics["total_input_tokens"], metrics["total_output_tokens"]) == (total_input, total_output)
    assert metrics["request_throughput"] == pytest.approx(len(done) / duration)
    assert metrics["output_throughput"] == pytest.approx(total_output / duration)
    assert metrics["total_token_throughput"] == pytest.approx((total_input + total_output) / duration)
    for name, values in samples.items():
        ms = [v * 1000 for v in values]
        assert metrics[f"mean_{name}_ms"] == pytest.approx(statistics.fmean(ms))
        assert metrics[f"median_{name}_ms"] == pytest.approx(statistics.median(ms))
        assert metrics[f"std_{name}_ms"] == pytest.approx(statistics.pstdev(ms))
        for p in (50, 90, 99):
            assert metrics[f"p{p}_{name}_ms"] == pytest.approx(percentile(ms, p))

    def good(r: RequestResult) -> bool:
        tpot = (r.latency - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
        return r.ttft * 1000 <= slos["ttft"] and tpot * 1000 <= slos["tpot"]
    assert metrics["request_goodput"] == pytest.approx(sum(map(good, done)) / duration)
    assert metrics["request_goodput"] < metrics["request_throughput"] or all(map(good, done))


def test_peaks_count_chunks_and_active_requests_per_second(tokenizer) -> None:
    # Request A: chunks at 0.2, 0.5, 0.9 (bin 0) and 1.3 (bin 1); request B starts at 0.6, chunks at
    # 0.7 (bin 0), 1.1, 1.2 (bin 1) and 2.5 (bin 2). Bin 0 holds 4 chunks; both run during bins 0 and 1.
    a = RequestResult(3, success=True, start_time=100.0, ttft=0.2, itl=[0.3, 0.4, 0.4], latency=1.3)
    b = RequestResult(3, success=True, start_time=100.6, ttft=0.1, itl=[0.4, 0.1, 1.3], latency=1.9)
    metrics = calculate_metrics([a, b], 3.0, tokenizer)
    assert metrics["max_output_tokens_per_s"] == 4.0
    assert metrics["max_concurrent_requests"] == 2


def test_all_failed_reports_zeros_not_nan(tokenizer) -> None:
    metrics = calculate_metrics([RequestResult(5, error="boom")] * 3, 1.0, tokenizer)
    assert (metrics["completed"], metrics["failed"], metrics["total_output_tokens"]) == (0, 3, 0)
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert metrics["request_goodput"] is None


def test_default_keys_are_vllms(tokenizer) -> None:
    metrics = calculate_metrics(random_results(np.random.default_rng(), 5), 1.0, tokenizer)
    assert {"p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms"} <= metrics.keys()
    assert "p99_e2el_ms" not in metrics  # vLLM's default --percentile-metrics is ttft,tpot,itl


def test_parsers_reject_bad_input() -> None:
    assert parse_goodput(["ttft:500", "e2el:2.5"]) == {"ttft": 500.0, "e2el": 2.5}
    assert parse_percentiles("50,99.9") == [50.0, 99.9]
    assert parse_percentile_metrics("ttft,e2el") == ["ttft", "e2el"]
    for parse, text in ((parse_goodput, ["itl:5"]), (parse_goodput, ["ttft:-1"]), (parse_goodput, ["ttft"]),
                        (parse_percentiles, "50,x"), (parse_percentiles, "101"),
                        (parse_percentile_metrics, "ttft,latency")):
        with pytest.raises(BenchError):
            parse(text)
