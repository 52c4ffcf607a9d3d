"""`tpuserve bench`: load generation and metrics with the semantics of vLLM's `vllm bench serve`, so our
numbers compare directly with published vLLM ones (see `cli.py` for the subcommands)."""

from tpuserve.serving.bench.errors import BenchError

__all__ = ["BenchError"]
