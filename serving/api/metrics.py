"""`/metrics`: Prometheus text with vLLM's metric names, so existing vLLM dashboards work unchanged.

Request-level numbers (tokens, finish reasons, latencies) are observed here, on the event loop, from the
stream of `RequestOutput`s each request yields; engine-level gauges (running, waiting, KV usage, prefix
cache, preemptions) are read from the engine at scrape time. Aborted requests count with
`finished_reason="abort"`, so a client disconnect is visible.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

from tpuserve.serving.engine.protocol import EngineClient
from tpuserve.serving.outputs import RequestOutput

# vLLM's bucket boundaries, so histograms line up with theirs on a shared dashboard.
# fmt: off
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
# fmt: on


SCALARS = (  # name, Prometheus type, help; values in `ServerMetrics.render`
    ("vllm:num_requests_running", "gauge", "Sequences in the running batch."),
    ("vllm:num_requests_waiting", "gauge", "Sequences waiting to be scheduled."),
    ("vllm:kv_cache_usage_perc", "gauge", "Fraction of KV-cache pages in use (1 = full)."),
    ("vllm:num_preemptions", "counter", "Preemptions (recomputations)."),
    ("vllm:prefix_cache_queries", "counter", "Prompt tokens looked up in the prefix cache."),
    ("vllm:prefix_cache_hits", "counter", "Prompt tokens found in the prefix cache."),
    ("vllm:prompt_tokens", "counter", "Prompt tokens of finished or aborted requests."),
    ("vllm:generation_tokens", "counter", "Generated tokens of finished or aborted requests."),
)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += count
        self.sum += value * count

    def lines(self, name: str, labels: str) -> Iterator[str]:
        cumulative = 0
        for bound, count in zip((*self.buckets, "+Inf"), self.counts, strict=True):
            cumulative += count
            yield f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}'
        yield f"{name}_sum{{{labels}}} {self.sum}"
        yield f"{name}_count{{{labels}}} {cumulative}"


class ServerMetrics:
    """Counts requests as they pass; engine gauges are summed over every engine (data-parallel replicas)."""

    def __init__(self, engine: EngineClient, model_name: str) -> None:
        self.engine = engine
        self.labels = f'model_name="{model_name}"'
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished = Counter[str]()
        self.ttft = Histogram(TTFT_BUCKETS)
        self.inter_token = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)

    async def track(
        self, outputs: AsyncIterator[RequestOutput], num_prompt_tokens: int, n: int
    ) -> AsyncIterator[RequestOutput]:
        """Pass a request's outputs through, observing its tokens and latencies; counts it when it ends
        (as n aborted sequences if it ends, e.g. by a disconnect, before its first output)."""
        last: RequestOutput | None = None
        last_time = 0.0
        try:
            async for output in outputs:
                now = time.monotonic()
                new_tokens = _num_tokens(output) - (_num_tokens(last) if last else 0)
                if new_tokens and (last is None or _num_tokens(last) == 0):
                    self.ttft.observe(now - output.metrics.arrival_time if output.metrics else 0.0)
                elif new_tokens:
                    self.inter_token.observe((now - last_time) / new_tokens, new_tokens)
                if new_tokens:
                    last_time = now
                last = output
                yield output
        finally:
            if last is not None:
                self._count(last)
            else:
                self.prompt_tokens += num_prompt_tokens
                self.finished["abort"] += n

    def _count(self, output: RequestOutput) -> None:
        self.prompt_tokens += len(output.prompt_token_ids)
        self.generation_tokens += _num_tokens(output)
        for completion in output.outputs:
            self.finished[completion.finish_reason or "abort"] += 1
        if output.metrics is not None:
            self.e2e.observe(time.monotonic() - output.metrics.arrival_time)

    def render(self) -> str:
        snapshots, labels = self.engine.snapshots(), self.labels
        lines = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            sample_name = f"{name}_total" if kind == "counter" else name
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"))
            lines.extend(f"{sample_name}{{{labels}{extra}}} {float(value)}" for extra, value in samples)

        values = (
            sum(s.num_running for s in snapshots),
            sum(s.num_waiting for s in snapshots),
            sum(s.kv_cache_usage for s in snapshots) / len(snapshots),
            sum(s.num_preemptions for s in snapshots),
            sum(s.prefix_cache_queries for s in snapshots),
            sum(s.prefix_cache_hits for s in snapshots),
            self.prompt_tokens,
            self.generation_tokens,
        )
        for (name, kind, help_text), value in zip(SCALARS, values, strict=True):
            family(name, kind, help_text, [("", value)])
        family(
            "vllm:request_success",
            "counter",
            "Finished sequences by finish reason.",
            [
                (f',finished_reason="{reason}"', self.finished[reason])
                for reason in ("stop", "length", "abort")
            ],
        )
        for name, histogram, help_text in (
            ("vllm:time_to_first_token_seconds", self.ttft, "Time to first token."),
            ("vllm:inter_token_latency_seconds", self.inter_token, "Time between generated tokens."),
            ("vllm:e2e_request_latency_seconds", self.e2e, "End-to-end request latency."),
        ):
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} histogram"))
            lines.extend(histogram.lines(name, labels))
        return "\n".join(lines) + "\n"


def _num_tokens(output: RequestOutput) -> int:
    return sum(len(completion.token_ids) for completion in output.outputs)
