"""Benchmark prompts: vLLM's `RandomDataset` and ShareGPT sampling, with tokenizers from local files only.

Prompts must be the same ones vLLM would build for the same seed and tokenizer, so the random dataset
follows vLLM's recipe step for step (lengths, offsets, decode/re-encode) with one `default_rng(seed)`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tpuserve.model import ModelLoadError
from tpuserve.model.loaders.gguf_tokenizer import gguf_tokenizer
from tpuserve.model.resolve import default_gguf_path
from tpuserve.serving.bench.errors import BenchError

log = logging.getLogger(__name__)

MAX_DECODE_RETRIES = 10


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """One benchmark prompt; `prompt_len` is what throughput counts (the dataset's, not the server's)."""

    prompt: str
    prompt_len: int
    expected_output_len: int
    request_id: str


def load_tokenizer(name: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """A `.gguf` file's tokenizer, a local tokenizer directory, or (None) the embedded SmolLM2's."""
    if name is None:
        return gguf_tokenizer(default_gguf_path())
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return gguf_tokenizer(path)
    if not path.is_dir():
        raise BenchError(f"tokenizer {name}: not a .gguf file or a local tokenizer directory")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        detail = str(error).strip().partition("\n")[0]
        raise ModelLoadError(path, f"cannot load the tokenizer ({detail})") from None


def random_requests(
    tokenizer: PreTrainedTokenizerBase,
    num_requests: int,
    input_len: int = 1024,
    output_len: int = 128,
    range_ratio: float = 0.0,
    prefix_len: int = 0,
    seed: int = 0,
    request_id_prefix: str = "",
) -> list[SampleRequest]:
    """vLLM's RandomDataset: uniform lengths in `[floor(L(1-r)), ceil(L(1+r))]`, a shared random prefix,
    then the ids `(offset + i + arange(L)) % |allowed|` over the non-special vocabulary."""
    if not 0.0 <= range_ratio < 1.0:
        raise BenchError(f"--random-range-ratio must be in [0, 1), got {range_ratio}")
    rng = np.random.default_rng(seed)
    real_input_len = max(0, input_len - int(tokenizer.num_special_tokens_to_add()))
    input_low = math.floor(real_input_len * (1 - range_ratio))
    if prefix_len + input_low < 1:
        raise BenchError("--random-input-len is too small: every prompt needs at least one token")
    input_high = math.ceil(real_input_len * (1 + range_ratio))
    output_low = max(1, math.floor(output_len * (1 - range_ratio)))
    output_high = max(1, math.ceil(output_len * (1 + range_ratio)))
    input_lens = rng.integers(input_low, input_high + 1, size=num_requests)
    output_lens = rng.integers(output_low, output_high + 1, size=num_requests)
    offsets = rng.integers(0, tokenizer.vocab_size, size=num_requests)
    allowed = np.array(sorted(set(range(tokenizer.vocab_size)) - set(tokenizer.all_special_ids)))
    prefix = _prefix(tokenizer, allowed, prefix_len, rng)
    requests = []
    for i in range(num_requests):
        inner = allowed[(offsets[i] + i + np.arange(input_lens[i])) % len(allowed)].tolist()
        prompt, token_ids = _decode_to_length(tokenizer, prefix + inner, prefix_len + int(input_lens[i]), rng)
        requests.append(SampleRequest(prompt, len(token_ids), int(output_lens[i]), f"{request_id_prefix}{i}"))
    return requests


def _prefix(tokenizer: PreTrainedTokenizerBase, allowed: np.ndarray, length: int,
            rng: np.random.Generator) -> list[int]:
    if length <= 0:
        return []
    ids = allowed[rng.integers(0, len(allowed), size=length)].tolist()
    return _decode_to_length(tokenizer, ids, length, rng)[1]


def _decode_to_length(tokenizer: PreTrainedTokenizerBase, token_ids: list[int], target: int,
                      rng: np.random.Generator) -> tuple[str, list[int]]:
    """Decode, re-encode, then pad with random ids or truncate until the text is `target` tokens long:
    consecutive ids may merge or split when re-tokenized. After the retry budget the drift is kept."""
    for _ in range(MAX_DECODE_RETRIES + 1):
        prompt = tokenizer.decode(token_ids)
        token_ids = tokenizer.encode(prompt, add_special_tokens=False)
        if len(token_ids) == target:
            break
        if len(token_ids) < target:
            token_ids += rng.integers(0, tokenizer.vocab_size, size=target - len(token_ids)).tolist()
        else:
            token_ids = token_ids[:target]
    else:
        log.warning("a random prompt has %d tokens instead of %d after re-tokenizing", len(token_ids), target)
    return prompt, token_ids


def sharegpt_requests(
    path: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase,
    num_requests: int,
    output_len: int | None = None,
    seed: int = 0,
    request_id_prefix: str = "",
) -> list[SampleRequest]:
    """ShareGPT-format JSON (`[{"conversations": [{"value": ...}, ...]}]`): prompt = turn 0, output length
    = turn 1's tokens (or OUTPUT_LEN); shuffled with SEED, vLLM's length filter, oversampled if short."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BenchError(f"dataset {path}: {error}") from None
    conversations = [e["conversations"] for e in data if len(e.get("conversations", ())) >= 2]
    shuffler = random.Random(seed)
    shuffler.shuffle(conversations)
    samples: list[SampleRequest] = []
    for turns in conversations:
        if len(samples) == num_requests:
            break
        prompt_len = len(tokenizer(turns[0]["value"]).input_ids)
        new_output_len = output_len or len(tokenizer(turns[1]["value"]).input_ids)
        if _valid_lengths(prompt_len, new_output_len, check_output=output_len is None):
            samples.append(SampleRequest(turns[0]["value"], prompt_len, new_output_len,
                                         f"{request_id_prefix}{len(samples)}"))
    if not samples:
        raise BenchError(f"dataset {path}: no conversation with two turns passes the length filter")
    while len(samples) < num_requests:
        extra = shuffler.choice(samples)
        samples.append(dataclasses.replace(extra, request_id=f"{request_id_prefix}{len(samples)}"))
    return samples


def _valid_lengths(prompt_len: int, output_len: int, check_output: bool) -> bool:
    """vLLM's filter: drop tiny prompts/outputs (< 4 tokens), prompts over 1024 and totals over 2048."""
    too_short = prompt_len < 4 or (check_output and output_len < 4)
    return not too_short and prompt_len <= 1024 and prompt_len + output_len <= 2048
