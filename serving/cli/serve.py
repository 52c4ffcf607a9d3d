"""`tpuserve serve [MODEL]`: load, compile every bucket, then serve the OpenAI-compatible API.

Flags use vLLM's names so `vllm serve` command lines carry over. Start-up progress goes to stderr;
`tpuserve: serving NAME at URL` is printed only when the server accepts connections.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from tpuserve.model import LoadedModel
from tpuserve.serving.api.context import ServingContext
from tpuserve.serving.api.launcher import PortInUseError, bind_socket, run_server, url
from tpuserve.serving.api.server import build_app
from tpuserve.serving.config import KV_CACHE_DTYPE_HELP, KV_CACHE_DTYPES
from tpuserve.serving.engine.async_engine import AsyncEngine
from tpuserve.serving.engine.data_parallel import DataParallelEngine
from tpuserve.serving.engine import multihost
from tpuserve.serving.llm import LLM
from tpuserve.serving.sample.logprobs import MAX_TOP_LOGPROBS

log = logging.getLogger("tpuserve.serve")

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
API_KEY_ENV = "TPUSERVE_API_KEY"
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_size(text: str) -> int:
    """Bytes from `4G`, `512MiB`, `1.5GB` or a plain number (binary units, as vLLM's size flags)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (try 2G or 512M)")
    return int(float(match[1]) * SIZE_UNITS[match[2].upper()])


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    server.add_argument(
        "--served-model-name",
        nargs="+",
        metavar="NAME",
        help="model name(s) clients use; the first appears in responses (default: MODEL)",
    )
    server.add_argument(
        "--api-key",
        nargs="+",
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on /v1 routes (also ${API_KEY_ENV})",
    )
    server.add_argument(
        "--chat-template", type=Path, metavar="FILE", help="Jinja chat template overriding the model's"
    )
    server.add_argument(
        "--max-logprobs",
        type=int,
        default=MAX_TOP_LOGPROBS,
        help=f"most logprobs a request may ask for (default and maximum: {MAX_TOP_LOGPROBS})",
    )
    server.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    engine = parser.add_argument_group("engine")
    engine.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    engine.add_argument("--max-num-seqs", type=int, default=64, help="most sequences per step (default: 64)")
    engine.add_argument(
        "--max-num-batched-tokens", type=int, default=512, help="tokens per step (default: 512)"
    )
    engine.add_argument("--page-size", type=int, default=None,
                        help="tokens per KV-cache page (default: 64 on CPU, 16 on accelerators)")
    engine.add_argument("--kv-cache-memory", type=memory_size, metavar="SIZE", help="KV-cache size, e.g. 4G")
    engine.add_argument("--num-pages", type=int, help="KV-cache pages, the null page included; overrides "
                        "--kv-cache-memory (vLLM's --num-gpu-blocks-override, e.g. to test preemption)")
    engine.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto", help=KV_CACHE_DTYPE_HELP)
    engine.add_argument(
        "--min-token-bucket", type=int,
        help="smallest compiled step size in tokens (default: 1 on CPU, 16 on accelerators)",
    )
    engine.add_argument("--seed", type=int, default=0, help="engine seed for unseeded requests (default: 0)")
    engine.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse KV pages of shared prompt prefixes (default: on)",
    )
    engine.add_argument(
        "--async-scheduling", action=argparse.BooleanOptionalAction,
        help="dispatch each step before reading the previous one's tokens, overlapping host work with the "
             "device (default: on on CPU, off on accelerators, where it measured slower)",
    )
    engine.add_argument("--tensor-parallel-size", type=int, default=1, help="devices to split the model over")
    engine.add_argument(
        "--data-parallel-size", type=int, default=1,
        help="independent engine replicas (each on --tensor-parallel-size devices) behind one API",
    )
    engine.add_argument(
        "--compilation-cache-dir", help="JAX compilation cache (default: $TPUSERVE_CACHE/jax)"
    )
    hosts = parser.add_argument_group("multi-host (jax.distributed)")
    hosts.add_argument(
        "--coordinator-address", metavar="HOST:PORT", help="process 0's address; enables multi-host"
    )
    hosts.add_argument("--num-processes", type=int, default=1, help="processes in the job (default: 1)")
    hosts.add_argument(
        "--process-id", type=int, default=0, help="this process (0 serves the API; others follow its steps)"
    )


def serve(args: argparse.Namespace) -> int:
    logging.getLogger("tpuserve").setLevel(args.log_level.upper())
    if not 0 <= args.max_logprobs <= MAX_TOP_LOGPROBS:
        return _fail(f"--max-logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    chat_template = _read_chat_template(args.chat_template)
    api_keys = args.api_key or ([os.environ[API_KEY_ENV]] if os.environ.get(API_KEY_ENV) else [])
    if args.coordinator_address:
        multihost.initialize(args.coordinator_address, args.num_processes, args.process_id)
        if args.process_id != 0:
            log.info("tpuserve: process %d following process 0's steps", args.process_id)
            multihost.follow(_make_llm(args)(tensor_parallel_size=args.tensor_parallel_size).engine)
            return 0
    try:
        sock = bind_socket(args.host, args.port)
    except PortInUseError as error:
        return _fail(str(error))
    engine, loaded, shutdown = _start_engine(args)
    names = args.served_model_name or [args.model or DEFAULT_MODEL_NAME]
    try:
        ctx = ServingContext.create(
            engine, loaded, names, max_logprobs=args.max_logprobs, chat_template=chat_template
        )
        ready = f"tpuserve: serving {names[0]} at {url(args.host, sock.getsockname()[1])}"
        run_server(build_app(ctx, api_keys), sock, ready, args.log_level)
    finally:
        shutdown()
    log.info("tpuserve: stopped")
    return 0


def _make_llm(args: argparse.Namespace) -> functools.partial[LLM]:
    """`LLM` with every engine flag applied; the caller picks the devices."""
    return functools.partial(
        LLM,
        args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        page_size=args.page_size,
        kv_cache_memory=args.kv_cache_memory,
        num_pages=args.num_pages,
        kv_cache_dtype=args.kv_cache_dtype,
        min_token_bucket=args.min_token_bucket,
        enable_prefix_caching=args.enable_prefix_caching,
        async_scheduling=args.async_scheduling,
        seed=args.seed,
        compilation_cache_dir=args.compilation_cache_dir,
    )


def _start_engine(
    args: argparse.Namespace,
) -> tuple[AsyncEngine | DataParallelEngine, LoadedModel, Callable[[], None]]:
    """The async engine the API drives, the model it serves, and how to stop it."""
    make_llm = _make_llm(args)
    if args.data_parallel_size > 1:
        front = DataParallelEngine(make_llm, args.data_parallel_size, args.tensor_parallel_size)
        return front, front.llms[0].loaded, front.shutdown
    llm = make_llm(tensor_parallel_size=args.tensor_parallel_size)
    if not args.coordinator_address:
        engine = AsyncEngine(llm.engine)
        return engine, llm.loaded, engine.shutdown
    leader = multihost.LockstepEngine(llm.engine)
    engine = AsyncEngine(leader)

    def shutdown() -> None:
        engine.shutdown()
        leader.stop()

    return engine, llm.loaded, shutdown


def _read_chat_template(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as error:
        raise SystemExit(f"error: cannot read --chat-template {path}: {error.strerror}") from None


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
