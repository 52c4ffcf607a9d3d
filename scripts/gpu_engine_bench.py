"""Engine throughput on a GPU machine: `LLM.generate` of a random-weight SmolLM2-135M with its real tokenizer.

Usage: here, into a folder git ignores:  .venv/bin/python scripts/gpu_engine_bench.py TOKENIZER_DIR --export
       on the device machine, after `pip install --no-deps --no-build-isolation -e .` (its image has no
       `gguf`, which `tpuserve.model` imports: carry its wheel, `pip download --no-deps gguf==0.19.0`):
                                         python3 scripts/gpu_engine_bench.py TOKENIZER_DIR [--seconds 140]
                                         [--[no-]async-scheduling]

The embedded GGUF (98 MB) cannot travel to the device machine, so TOKENIZER_DIR holds what can: SmolLM2's
HF `config.json` (as the GGUF loader reads it) and its tokenizer files, which `--export` writes. On the
device machine the script makes a bfloat16 checkpoint of that config with random weights (`transformers`),
then runs the same `benchmark_offline` cases as `tpuserve bench offline` in one process, so each engine
compiles once: 256 prompts 128/128 at 64 sequences, one stream 16/128, sixteen 512-token prefills, and,
while `--seconds` have not passed, 1024 prompts 128/128 at 256 sequences. Random weights change no shape, so
the timings stand for the real model's; every request ignores EOS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax

from tpuserve.model.loaders.gguf import read_gguf
from tpuserve.model.loaders.gguf_tokenizer import gguf_tokenizer
from tpuserve.model.resolve import default_gguf_path
from tpuserve.serving.bench.datasets import random_requests
from tpuserve.serving.bench.offline import benchmark_offline
from tpuserve.serving.llm import LLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def export(tokenizer_dir: Path) -> None:
    """The embedded model's HF config and tokenizer, without its weights."""
    gguf = default_gguf_path()
    gguf_tokenizer(gguf).save_pretrained(tokenizer_dir)
    (tokenizer_dir / "config.json").write_text(json.dumps(read_gguf(gguf).hf_config, indent=1) + "\n")


def random_checkpoint(tokenizer_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tokenizer_dir, local_files_only=True)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out / name)


def run(label: str, llm: LLM, num_prompts: int, input_len: int, output_len: int, results: dict) -> None:
    requests = random_requests(llm.get_tokenizer(), num_prompts, input_len, output_len)
    benchmark_offline(llm, requests[:8])  # the first calls of the host paths
    results[label] = result = benchmark_offline(llm, requests)
    print(f"{label}: {result['output_tokens_per_second']:.1f} output tok/s, "
          f"{result['tokens_per_second']:.1f} total tok/s in {result['elapsed_time']:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir", type=Path)
    parser.add_argument("--export", action="store_true", help="write TOKENIZER_DIR from the embedded GGUF")
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/smollm2-random"))
    parser.add_argument("--seconds", type=float, default=140.0)
    parser.add_argument("--result-json", type=Path)
    parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction)
    args = parser.parse_args()
    if args.export:
        export(args.tokenizer_dir)
        return
    start = time.perf_counter()
    if not args.checkpoint.exists():
        random_checkpoint(args.tokenizer_dir, args.checkpoint)
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
    results: dict = {}
    llm = LLM(str(args.checkpoint), "bfloat16", max_num_seqs=64, async_scheduling=args.async_scheduling,
              use_tqdm=False)
    print(f"engine of 64 sequences built and compiled in {time.perf_counter() - start:.1f} s", flush=True)
    run("256 prompts 128/128, 64 sequences", llm, 256, 128, 128, results)
    run("one stream 16/128", llm, 1, 16, 128, results)
    run("16 prompts 512/1", llm, 16, 512, 1, results)
    del llm
    if time.perf_counter() - start < args.seconds:
        llm = LLM(str(args.checkpoint), "bfloat16", max_num_seqs=256, max_num_batched_tokens=2048,
                  async_scheduling=args.async_scheduling, use_tqdm=False)
        run("1024 prompts 128/128, 256 sequences", llm, 1024, 128, 128, results)
    if args.result_json:
        args.result_json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
