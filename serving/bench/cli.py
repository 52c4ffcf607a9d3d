"""`tpuserve bench serve|offline|sweep|roofline`: registered into `serving/cli/main.py`'s COMMANDS."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from tpuserve.serving.bench import offline, roofline, serve, sweep
from tpuserve.serving.bench.errors import BenchError

SUBCOMMANDS = (
    ("serve", serve, "vLLM's serving benchmark against an OpenAI-compatible server (ours, llama-server...)"),
    ("offline", offline, "LLM.generate throughput for given lengths and counts, no HTTP"),
    ("sweep", sweep, "serving benchmark at concurrency 1, 4, 16, 64: output throughput vs TPOT"),
    ("roofline", roofline, "measured matmul peak and memory bandwidth, and a model's tok/s ceilings"),
)
Run = Callable[[argparse.Namespace], int]


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks with vLLM's metric definitions")
    commands = parser.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    for name, module, help_text in SUBCOMMANDS:
        command = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=_one_line_errors(module.run))


def _one_line_errors(run: Run) -> Run:
    """Bad benchmark input is a user error: one `error:` line and exit status 1, never a traceback."""
    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except BenchError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return wrapped
