"""`tpuserve serve [MODEL]`: load, compile every bucket, then serve the OpenAI-compatible API.

Flags use vLLM's names so `vllm serve` command lines carry over. Start-up progress goes to stderr;
`tpuserve: serving NAME at URL` is printed only when the server accepts connections.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tpuserve.model import LoadedModel
from tpuserve.serving.api.context import ServingContext
from tpuserve.serving.api.launcher import PortInUseError, bind_socket, run_server, url
from tpuserve.serving.api.server import build_app
from tpuserve.serving.args import EngineArgs, build_engine
from tpuserve.serving.engine import multihost
from tpuserve.serving.engine.async_engine import AsyncEngine
from tpuserve.serving.engine.data_parallel import DataParallelEngine
from tpuserve.serving.engine.protocol import EngineClient
from tpuserve.serving.sampling_params import MAX_LOGPROBS

log = logging.getLogger("tpuserve.serve")

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
API_KEY_ENV = "TPUSERVE_API_KEY"
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
        default=MAX_LOGPROBS,
        help=f"most logprobs a request may ask for (default and maximum: {MAX_LOGPROBS})",
    )
    server.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    EngineArgs.add_cli_args(parser)
    parser.add_argument(
        "--data-parallel-size", type=int, default=1,
        help="independent engine replicas (each on --tensor-parallel-size devices) behind one API",
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
    if not 0 <= args.max_logprobs <= MAX_LOGPROBS:
        return _fail(f"--max-logprobs must be between 0 and {MAX_LOGPROBS}")
    chat_template = _read_chat_template(args.chat_template)
    api_keys = args.api_key or ([os.environ[API_KEY_ENV]] if os.environ.get(API_KEY_ENV) else [])
    if args.coordinator_address:
        multihost.initialize(args.coordinator_address, args.num_processes, args.process_id)
        if args.process_id != 0:
            log.info("tpuserve: process %d following process 0's steps", args.process_id)
            multihost.follow(build_engine(EngineArgs.from_cli_args(args)))
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


def _start_engine(args: argparse.Namespace) -> tuple[EngineClient, LoadedModel, Callable[[], None]]:
    """The engine client the API drives, the model it serves, and how to stop it."""
    engine_args = EngineArgs.from_cli_args(args)
    if args.data_parallel_size > 1:
        front = DataParallelEngine(functools.partial(build_engine, engine_args),
                                   args.data_parallel_size, args.tensor_parallel_size)
        return front, front.replicas[0].engine.loaded, front.shutdown
    engine = build_engine(engine_args)
    if not args.coordinator_address:
        client = AsyncEngine(engine)
        return client, engine.loaded, client.shutdown
    leader = multihost.LockstepEngine(engine)
    client = AsyncEngine(leader)

    def shutdown() -> None:
        client.shutdown()
        leader.stop()

    return client, engine.loaded, shutdown


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
