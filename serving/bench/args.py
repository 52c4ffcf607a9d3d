"""Arguments shared by `bench serve` and `bench sweep`, spelled as in `vllm bench serve`, and their
translation into prompts and a `LoadConfig`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from tpuserve.serving.bench.client import BACKENDS
from tpuserve.serving.bench.datasets import SampleRequest, load_tokenizer, random_requests, sharegpt_requests
from tpuserve.serving.bench.errors import BenchError
from tpuserve.serving.bench.runner import LoadConfig

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
            "repetition_penalty")


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--backend", choices=sorted(BACKENDS), default="openai",
                       help="openai/vllm: /v1/completions; openai-chat: /v1/chat/completions")
    group.add_argument("--base-url", help="server URL, e.g. http://127.0.0.1:8080 (default: --host/--port)")
    group.add_argument("--host", default="127.0.0.1")
    group.add_argument("--port", type=int, default=8000)
    group.add_argument("--endpoint", help="API path (default: the backend's)")
    group.add_argument("--model", help="model name sent to the server (default: first of /v1/models)")
    group.add_argument("--tokenizer", help="local tokenizer directory or .gguf (default: --model if it is a "
                       "local path, else the embedded SmolLM2)")
    group.add_argument("--header", nargs="*", default=[], metavar="KEY=VALUE", help="extra request headers")
    group.add_argument("--ready-check-timeout-sec", type=float, default=600.0,
                       help="retry the first request this long before starting (0: skip the check)")
    group.add_argument("--disable-tqdm", action="store_true", help="no progress bar")


def add_dataset_arguments(parser: argparse.ArgumentParser, num_prompts: int | None = 1000,
                          num_prompts_help: str | None = None, seed: bool = True) -> None:
    """SEED False: the command's `EngineArgs` `--seed` seeds the dataset too (vLLM's `bench throughput`)."""
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset-name", choices=("random", "sharegpt"), default="random")
    group.add_argument("--dataset-path", help="ShareGPT-format JSON file (for --dataset-name sharegpt)")
    group.add_argument("--num-prompts", type=int, default=num_prompts, help=num_prompts_help)
    if seed:
        group.add_argument("--seed", type=int, default=0)
    group.add_argument("--random-input-len", "--input-len", type=int, default=1024)
    group.add_argument("--random-output-len", "--output-len", type=int, default=128)
    group.add_argument("--random-range-ratio", type=float, default=0.0)
    group.add_argument("--random-prefix-len", type=int, default=0)
    group.add_argument("--sharegpt-output-len", type=int, help="fixed output length instead of turn 1's")
    group.add_argument("--request-id-prefix", default="bench-")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (sent in the request body; temperature defaults to 0)")
    for name in SAMPLING:
        group.add_argument(f"--{name.replace('_', '-')}", type=int if name == "top_k" else float)
    group.add_argument("--ignore-eos", action="store_true",
                       help="send ignore_eos (always on for the random dataset, as in vLLM)")
    group.add_argument("--logprobs", type=int, help="logprobs per token (completions backend)")
    group.add_argument("--extra-body", type=json.loads, default={}, help="JSON merged into every request")


def target_urls(args: argparse.Namespace) -> tuple[str, str]:
    """(base URL, request URL) from --base-url or --host/--port, plus --endpoint or the backend's path."""
    base = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    return base, base + (args.endpoint or BACKENDS[args.backend])


def tokenizer_for(args: argparse.Namespace, model: str) -> tuple[PreTrainedTokenizerBase, str]:
    """The tokenizer and its label: --tokenizer, else --model when it names local files, else SmolLM2's."""
    name = args.tokenizer or (model if Path(model).expanduser().exists() else None)
    return load_tokenizer(name), name or "SmolLM2-135M-Instruct (embedded)"


def sample_requests(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase,
                    num_prompts: int) -> list[SampleRequest]:
    if args.dataset_name == "sharegpt":
        if not args.dataset_path:
            raise BenchError("--dataset-name sharegpt needs --dataset-path (a local JSON file)")
        return sharegpt_requests(args.dataset_path, tokenizer, num_prompts, args.sharegpt_output_len,
                                 args.seed, args.request_id_prefix)
    if args.dataset_path:
        raise BenchError("--dataset-path is for --dataset-name sharegpt, not random")
    return random_requests(tokenizer, num_prompts, args.random_input_len, args.random_output_len,
                           args.random_range_ratio, args.random_prefix_len, args.seed, args.request_id_prefix)


def load_config(args: argparse.Namespace, url: str, model: str, **overrides: object) -> LoadConfig:
    """vLLM's request body rules: greedy unless --temperature, ignore_eos forced for the random dataset."""
    sampling = {name: getattr(args, name) for name in SAMPLING if getattr(args, name) is not None}
    sampling.setdefault("temperature", 0.0)
    headers = dict(_key_value(item) for item in args.header)
    fields = dict(
        url=url, model=model, seed=args.seed, ignore_eos=args.ignore_eos or args.dataset_name == "random",
        logprobs=args.logprobs, extra_body=sampling | args.extra_body, extra_headers=headers,
        ready_timeout_s=args.ready_check_timeout_sec, progress=not args.disable_tqdm,
    )
    return LoadConfig(**(fields | overrides))


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise BenchError(f"--header {item!r}: expected KEY=VALUE")
    return key.strip(), value.strip()

