"""`tpuserve serve|info|convert`: argparse subcommands, each a `register(subparsers)` function.

New subcommands (bench, ...) live in their own module and add their `register` to `COMMANDS`. Checkpoint
problems are expected user errors: they print one `error:` line and exit 1, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence

from tpuserve.model import ModelLoadError, load_model
from tpuserve.model.info import model_info
from tpuserve.model.loading import save_converted
from tpuserve.serving.args import DTYPES
from tpuserve.serving.bench.cli import register_bench
from tpuserve.serving.cli.serve import add_serve_arguments, serve

DTYPE_HELP = "parameter dtype (default: float32 on CPU, bfloat16 on accelerators)"
Subparsers = argparse._SubParsersAction
MODEL_HELP = "a .gguf file, a Hugging Face directory or a tpuserve Orbax directory (default: SmolLM2-135M)"


def _add_model_arguments(parser: argparse.ArgumentParser, with_dtype: bool = True) -> None:
    """MODEL, and `--dtype` unless the command's `EngineArgs` flags bring it."""
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help=MODEL_HELP)
    if with_dtype:
        parser.add_argument("--dtype", choices=DTYPES, help=DTYPE_HELP)


def _info(args: argparse.Namespace) -> int:
    print("\n".join(model_info(args.model, args.dtype).lines()))
    return 0


def _convert(args: argparse.Namespace) -> int:
    dest = save_converted(load_model(args.src, args.dtype), args.dest)
    print(f"wrote {dest}")
    return 0


def register_serve(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("serve", help="load a model and serve the OpenAI-compatible API")
    _add_model_arguments(parser, with_dtype=False)
    add_serve_arguments(parser)
    parser.set_defaults(run=serve)


def register_info(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("info", help="show a model's size and memory needs without loading it")
    _add_model_arguments(parser)
    parser.set_defaults(run=_info)


def register_convert(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("convert", help="write a checkpoint as a fast-loading tpuserve Orbax dir")
    parser.add_argument("src", metavar="SRC", help=MODEL_HELP)
    parser.add_argument("dest", metavar="DEST", help="new directory to create")
    parser.add_argument("--dtype", choices=DTYPES, help=DTYPE_HELP)
    parser.set_defaults(run=_convert)


COMMANDS: tuple[Callable[[Subparsers], None], ...] = (register_serve, register_info, register_convert)
COMMANDS += (register_bench,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpuserve", description="JAX LLM serving, vLLM-compatible API")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


@contextlib.contextmanager
def _progress_to_stderr() -> Iterator[None]:
    """Loading progress and timings go to stderr while a command runs; only our loggers, not every
    library's INFO chatter. Undone afterwards so `main` can be called repeatedly (tests, other tools)."""
    logger = logging.getLogger("tpuserve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved_level, saved_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _progress_to_stderr():
        try:
            return args.run(args)
        except ModelLoadError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
