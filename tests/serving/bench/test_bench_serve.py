"""`bench serve` against the scripted fake server: timings near the scripted delays, vLLM's payload and
counting rules, failures counted apart, concurrency caps, and the CLI's result JSON."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.serving.bench.fake_server import MODEL, Script, serving
from tpuserve.serving.bench.client import CHAT, COMPLETIONS
from tpuserve.serving.bench.datasets import SampleRequest
from tpuserve.serving.bench.load import arrival_times
from tpuserve.serving.bench.metrics import calculate_metrics
from tpuserve.serving.bench.runner import LoadConfig, run_load
from tpuserve.serving.cli.main import main

SLACK = 0.5  # seconds a loaded 2-core machine may add on top of a scripted delay


def requests(num: int, output_len: int, fail: tuple[int, ...] = ()) -> list[SampleRequest]:
    return [SampleRequest("FAIL" if i in fail else "hello world", 2, output_len, f"r{i}") for i in range(num)]


def run(url: str, reqs: list[SampleRequest], **config: object):
    return asyncio.run(run_load(LoadConfig(url=url, model=MODEL, progress=False, **config), reqs))


@pytest.mark.parametrize("endpoint", [COMPLETIONS, CHAT])
def test_timings_follow_the_scripted_stream(endpoint: str, tokenizer) -> None:
    script = Script(first_delay=0.15, gap=0.03)
    chunks = int(np.random.default_rng().integers(3, 7))
    with serving(script) as (url, _):
        results, duration = run(url + endpoint, requests(3, chunks))
    for r in results:
        assert r.success, r.error
        assert script.first_delay <= r.ttft < script.first_delay + SLACK
        assert r.ttft_content == r.ttft
        assert len(r.itl) == chunks - 1
        assert r.latency >= script.first_delay + (chunks - 1) * script.gap
        assert r.output_tokens == chunks * script.usage_per_chunk
        assert len(r.generated_text.split()) == chunks
        last_chunk = r.ttft + sum(r.itl)
        if endpoint == COMPLETIONS:
            assert r.latency == pytest.approx(last_chunk)
        else:  # chat: E2EL runs to the usage-only message that follows the last chunk
            assert last_chunk <= r.latency < last_chunk + SLACK
    metrics = calculate_metrics(results, duration, tokenizer)
    assert metrics["total_output_tokens"] == 3 * chunks * script.usage_per_chunk
    assert metrics["output_throughput"] == pytest.approx(metrics["total_output_tokens"] / duration)
    assert duration >= max(r.latency for r in results)


def test_role_only_first_delta_gives_both_ttfts() -> None:
    script = Script(first_delay=0.4, gap=0.02, role_first=True)
    with serving(script) as (url, _):
        [result], _ = run(url + CHAT, requests(1, 4))
    assert result.ttft < script.first_delay <= result.ttft_content
    assert len(result.itl) == 4  # the role delta counts as a chunk for vLLM's TTFT and ITL


def test_without_usage_the_tokenizer_counts_the_text(tokenizer) -> None:
    with serving(Script(report_usage=False, first_delay=0.01, gap=0.01)) as (url, _):
        results, duration = run(url + COMPLETIONS, requests(4, 5, fail=(2,)))
    assert [r.output_tokens for r in results] == [0] * 4
    metrics = calculate_metrics(results, duration, tokenizer)
    assert (metrics["completed"], metrics["failed"]) == (3, 1)
    assert "500" in results[2].error
    assert metrics["total_output_tokens"] == 3 * 5
    assert metrics["total_input_tokens"] == 3 * 2


def test_a_mid_stream_error_event_fails_the_request() -> None:
    with serving(Script(first_delay=0.01, gap=0.01, error_after=2)) as (url, _):
        [result], _ = run(url + CHAT, requests(1, 5), ready_timeout_s=0)
    assert not result.success
    assert result.error == "scripted mid-stream failure"


@pytest.mark.parametrize("cap", [1, 3])
def test_max_concurrency_caps_requests_in_flight(cap: int) -> None:
    with serving(Script(first_delay=0.05, gap=0.01)) as (url, recorder):
        run(url + COMPLETIONS, requests(6, 2), max_concurrency=cap, ready_timeout_s=0)
    assert recorder.peak_in_flight == cap


def test_request_rate_sends_on_the_arrival_schedule() -> None:
    num, rate, seed = 5, 10.0, int(np.random.default_rng().integers(1000))
    with serving(Script(first_delay=0.01, gap=0.01)) as (url, _):
        results, duration = run(url + COMPLETIONS, requests(num, 2), request_rate=rate, seed=seed,
                                ready_timeout_s=0)
    due = arrival_times(num, rate, seed=seed)
    starts = np.array([r.start_time for r in results])
    # Never early; late by at most the event loop's scheduling delay (the first send's lateness shrinks gaps).
    assert np.all(starts - starts[0] >= due - due[0] - 0.05)
    assert duration >= num / rate


def test_cli_writes_vllm_result_json(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    num, output_len = 5, 4
    with serving(Script(first_delay=0.02, gap=0.01)) as (url, recorder):
        code = main(["bench", "serve", "--base-url", url, "--tokenizer", str(tokenizer_dir), "--disable-tqdm",
                     "--num-prompts", str(num), "--random-input-len", "6",
                     "--random-output-len", str(output_len),
                     "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99.9",
                     "--goodput", "ttft:60000", "tpot:60000", "--save-detailed", "--result-json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model_id"] == MODEL
    assert (result["completed"], result["failed"]) == (num, 0)
    assert result["total_output_tokens"] == num * output_len * Script.usage_per_chunk
    assert result["total_input_tokens"] == sum(result["input_lens"]) == num * 6
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for key in (f"mean_{metric}_ms", f"median_{metric}_ms", f"std_{metric}_ms", f"p50_{metric}_ms",
                    f"p99.9_{metric}_ms"):
            assert math.isfinite(result[key]) and result[key] >= 0, key
    assert result["mean_ttft_content_ms"] == pytest.approx(result["mean_ttft_ms"])  # no role-only deltas
    assert len(result["itls"]) == num and all(len(itl) == output_len - 1 for itl in result["itls"])
    # The first recorded request is the readiness probe; then one per prompt, as vLLM sends them.
    assert len(recorder.bodies) == num + 1
    body = recorder.bodies[-1]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert (body["ignore_eos"], body["temperature"], body["max_tokens"]) == (True, 0.0, output_len)
    request_ids = {headers["x-request-id"] for headers in recorder.headers[1:]}
    assert request_ids == {f"bench-{i}" for i in range(num)}


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["bench", "serve", "--base-url", "http://127.0.0.1:9", "--model", "m", "--goodput", "ttft=5"])
    assert code == 1
    expected = "error: --goodput 'ttft=5': expected KEY:MILLISECONDS, e.g. ttft:500"
    assert capsys.readouterr().err.strip() == expected
