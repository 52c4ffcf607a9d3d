"""Build a Hugging Face fast tokenizer from a GGUF file's metadata, without torch.

transformers can do this too, but its GGUF path imports torch, which tpuserve does not ship. A GGUF
stores the vocabulary, merges or scores, token types and special ids; we assemble the same
`tokenizers.Tokenizer` llama.cpp would run (byte-level BPE or SentencePiece BPE) and wrap it in
`PreTrainedTokenizerFast` with the chat template attached.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from gguf import GGUFReader, TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.loaders.gguf import GGUFCheckpoint
from tpuserve.model.loaders.gguf_metadata import metadata, open_gguf

_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
# StarCoder-lineage vocabularies (SmolLM) cut every digit apart before GPT-2's split.
_DIGITS_THEN_BYTE_LEVEL = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), _BYTE_LEVEL]
)


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    """A model-specific split regex replaces GPT-2's; the byte mapping stays the same."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# `tokenizer.ggml.pre` -> how text is cut before BPE, as in llama.cpp's `llama-vocab.cpp`. A file without
# the key gets GPT-2's split, as in transformers (llama.cpp's "default" regex differs slightly).
_PRE_TOKENIZERS: dict[str, pre_tokenizers.PreTokenizer] = {
    "default": _BYTE_LEVEL,
    "gpt-2": _BYTE_LEVEL,
    "smollm": _DIGITS_THEN_BYTE_LEVEL,
    "starcoder": _DIGITS_THEN_BYTE_LEVEL,
    "llama-bpe": _split_then_bytes(_LLAMA3_SPLIT),
    "qwen2": _split_then_bytes(_QWEN2_SPLIT),
}


def gguf_tokenizer(source: str | os.PathLike[str] | GGUFCheckpoint) -> PreTrainedTokenizerFast:
    """The tokenizer a GGUF file describes, with its special tokens registered and its chat template set.

    Pass the `GGUFCheckpoint` already opened for the weights to skip parsing the metadata a second time.
    """
    if isinstance(source, GGUFCheckpoint):
        path, reader = source.path, source.reader
    else:
        path = Path(source)
        reader = open_gguf(path)
    try:
        return _build(reader)
    except (KeyError, IndexError, ValueError) as error:
        raise ModelLoadError(path, str(error).strip("'\"")) from None


def _build(reader: GGUFReader) -> PreTrainedTokenizerFast:
    kind = metadata(reader, "tokenizer.ggml.model")
    if kind not in _BACKENDS:
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r} (supported: {', '.join(_BACKENDS)})")
    architecture = metadata(reader, "general.architecture")
    if kind == "llama" and architecture.startswith("gemma"):
        # Gemma files spell whitespace tokens and order merges differently from Llama's SentencePiece.
        raise ValueError(f"the SentencePiece tokenizer of {architecture!r} GGUF files is not supported")
    tokens: list[str] = metadata(reader, "tokenizer.ggml.tokens")
    backend = _BACKENDS[kind](reader, tokens)
    _register_added_tokens(backend, tokens, metadata(reader, "tokenizer.ggml.token_type"))

    def special(key: str) -> str | None:
        token_id = metadata(reader, f"tokenizer.ggml.{key}_token_id", None)
        return None if token_id is None else tokens[token_id]

    bos = special("bos")
    # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
    add_bos = bool(metadata(reader, "tokenizer.ggml.add_bos_token", kind == "llama"))
    if add_bos and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=special("eos"),
        unk_token=special("unknown"),
        pad_token=special("padding"),
        add_bos_token=add_bos,
        chat_template=metadata(reader, "tokenizer.chat_template", None),
    )


def _byte_level_bpe(reader: GGUFReader, tokens: list[str]) -> Tokenizer:
    """GPT-2 style: tokens and merges ("left right") spelled in GPT-2's byte-to-unicode alphabet."""
    merges = [tuple(merge.split(" ", 1)) for merge in metadata(reader, "tokenizer.ggml.merges")]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = _pre_tokenizer(metadata(reader, "tokenizer.ggml.pre", "default"))
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(reader: GGUFReader, tokens: list[str]) -> Tokenizer:
    """SentencePiece BPE (Llama 2, Mistral): "▁" for spaces, <0xNN> byte fallback, and no merge list.

    llama.cpp repeatedly joins the adjacent pair whose result scores highest; BPE reproduces that with
    every (left, right) split of each token as a merge, ranked by the token's score.
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    scores = dict(zip(tokens, metadata(reader, "tokenizer.ggml.scores"), strict=True))
    merges = generate_merges(vocab, scores)
    backend = Tokenizer(models.BPE(vocab, merges, fuse_unk=True, byte_fallback=True))
    prefix = "first" if metadata(reader, "tokenizer.ggml.add_space_prefix", True) else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prefix, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix == "first" else []))
    return backend


_BACKENDS: dict[str, Callable[[GGUFReader, list[str]], Tokenizer]] = {
    "gpt2": _byte_level_bpe,
    "llama": _sentencepiece_bpe,
}


def _pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    if name not in _PRE_TOKENIZERS:
        raise ValueError(f"unsupported GGUF pre-tokenizer {name!r} (supported: {', '.join(_PRE_TOKENIZERS)})")
    return _PRE_TOKENIZERS[name]


def _register_added_tokens(backend: Tokenizer, tokens: list[str], token_types: list[int]) -> None:
    """Control tokens (e.g. <|im_start|>) and user-defined ones must match whole, never be cut by BPE."""
    control = [
        AddedToken(token, normalized=False, special=True)
        for token, kind in zip(tokens, token_types, strict=True)
        if kind == TokenType.CONTROL
    ]
    user_defined = [
        AddedToken(token, normalized=False, special=False)
        for token, kind in zip(tokens, token_types, strict=True)
        if kind == TokenType.USER_DEFINED
    ]
    backend.add_special_tokens(control)
    backend.add_tokens(user_defined)
