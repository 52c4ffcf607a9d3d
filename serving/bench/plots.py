"""`--plot`: latency CDFs and throughput over time as PNGs. matplotlib is optional, imported only here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from tpuserve.serving.bench.client import RequestResult
from tpuserve.serving.bench.errors import BenchError
from tpuserve.serving.bench.metrics import per_second


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend, or a one-line error saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_serve(results: Sequence[RequestResult], prefix: Path) -> list[Path]:
    """PREFIX_latency_cdf.png (TTFT, ITL, E2EL) and PREFIX_throughput.png (chunks/s, active requests)."""
    plt = pyplot()
    done = [r for r in results if r.success]
    cdf_path = prefix.with_name(f"{prefix.name}_latency_cdf.png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, seconds in (("TTFT", [r.ttft for r in done]), ("ITL", [g for r in done for g in r.itl]),
                           ("E2EL", [r.latency for r in done])):
        if seconds:
            ms = np.sort(seconds) * 1000
            ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post", label=label)
    ax.set(xscale="log", xlabel="latency (ms)", ylabel="fraction of samples", title="Latency CDF")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(cdf_path, dpi=120, bbox_inches="tight")
    plt.close(fig)

    throughput_path = prefix.with_name(f"{prefix.name}_throughput.png")
    chunks, active = per_second(done)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(np.arange(len(chunks)), chunks, label="output chunks/s")
    ax.set(xlabel="time since first request (s)", ylabel="chunks per second", title="Throughput over time")
    twin = ax.twinx()
    twin.plot(np.arange(len(active)), active, color="tab:orange", label="active requests")
    twin.set_ylabel("active requests")
    fig.legend(loc="upper right")
    fig.savefig(throughput_path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [cdf_path, throughput_path]


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One point per concurrency: where extra load stops buying throughput and starts costing latency."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    tpot = [row["mean_tpot_ms"] for row in rows]
    throughput = [row["output_throughput"] for row in rows]
    ax.plot(tpot, throughput, marker="o")
    for row, x, y in zip(rows, tpot, throughput, strict=True):
        ax.annotate(f"c={row['max_concurrency']}", (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel="mean TPOT (ms)", ylabel="output throughput (tok/s)", title="Concurrency sweep")
    ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
