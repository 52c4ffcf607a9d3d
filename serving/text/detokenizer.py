"""Incremental detokenization for streaming: text deltas per generated token, never half a character.

Byte-level BPE splits one emoji or CJK character across several tokens, so decoding a token alone
yields U+FFFD. Like vLLM, each step decodes a short window of recent tokens twice (with and without
the new ones) and emits the difference only once it no longer ends in U+FFFD. Decoding a window
instead of single tokens also keeps tokenizer-specific spacing (SentencePiece word starts) right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tpuserve.serving.text.stop_strings import StopStringMatcher

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Prompt tokens decoded as context before the first output token, as in vLLM.
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class DetokenizerUpdate:
    """What one `add_tokens` call contributes to the stream."""

    text_delta: str
    stopped: bool = False
    stop_str: str | None = None


class IncrementalDetokenizer:
    """Turns one request's generated token ids into streamed text, applying its stop strings.

    `text` is everything emitted so far. When the output ends without a stop string (length, EOS),
    `finish` releases text held back as a possible stop-string start, plus bytes of a character
    that never completed (decoded to U+FFFD, exactly as `tokenizer.decode` of all ids shows them).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        stop: str | Iterable[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.stop = StopStringMatcher(stop, include_stop_str_in_output)
        self._decode_raw = raw_decoder(tokenizer)
        self._special_ids = set(tokenizer.all_special_ids)
        self._added_ids = set(tokenizer.added_tokens_decoder)
        self.text = ""
        context = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        if self._decode(context).endswith(REPLACEMENT_CHAR):
            context = []  # a prompt cut mid-character would swallow the first output bytes
        self._ids = context  # decoding window source: prompt context + every output token
        self._prefix_offset = 0  # window start: already-emitted tokens kept as decoding context
        self._read_offset = len(context)  # tokens before this have been emitted as text

    @property
    def stopped(self) -> bool:
        return self.stop.stopped

    def add_tokens(self, new_ids: Iterable[int]) -> DetokenizerUpdate:
        """Decode newly generated tokens; stop strings are checked on the decoded text."""
        decoded = "".join(self._decode_next(token_id) for token_id in new_ids)
        return self._emit(decoded)

    def finish(self) -> str:
        """Release all withheld text; for requests that end without a stop string (length, EOS)."""
        if self.stopped:
            return ""
        tail = self._emit(self._window_delta(allow_partial=True)).text_delta
        flushed = self.stop.flush()
        self.text += flushed
        return tail + flushed

    def _emit(self, decoded: str) -> DetokenizerUpdate:
        check = self.stop.feed(decoded)
        self.text += check.released
        return DetokenizerUpdate(check.released, check.stop_str is not None, check.stop_str)

    def _decode_next(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._window_delta(allow_partial=False)

    def _window_delta(self, allow_partial: bool) -> str:
        """New text of the tokens after the read offset, or "" while it ends mid-character."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text):
            return ""
        if full_text.endswith(REPLACEMENT_CHAR) and not allow_partial:
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full_text[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        """`tokenizer.decode`, plus the spaces around added tokens that transformers 5 no longer inserts.

        With `spaces_between_special_tokens`, runs of ordinary tokens and each added token are
        decoded separately and joined by " ", as vLLM (and transformers 4's slow tokenizers) do.
        """
        if not self.spaces_between_special_tokens:
            return self._decode_raw(ids, self.skip_special_tokens)
        segments: list[list[int]] = [[]]
        for token_id in ids:
            if self.skip_special_tokens and token_id in self._special_ids:
                continue
            if token_id in self._added_ids:
                segments += [[token_id], []]
            else:
                segments[-1].append(token_id)
        return " ".join(self._decode_raw(segment, False) for segment in segments if segment)


def raw_decoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[int], bool], str]:
    """`(ids, skip_special_tokens) -> tokenizer.decode(...)`, straight to the Rust tokenizer when that is the
    same function: a fast tokenizer that cleans up no spaces. transformers' Python wrapper costs several
    times the Rust decode, and the engine decodes twice per token of every request."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False:
        return lambda ids, skip: backend.decode(ids, skip_special_tokens=skip)
    return lambda ids, skip: tokenizer.decode(ids, skip_special_tokens=skip)
