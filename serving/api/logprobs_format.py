"""Engine logprobs (`{token_id: Logprob}` per position) in the two OpenAI formats.

Chat: `content[{token, logprob, bytes, top_logprobs[...]}]`, the k alternatives ranked by likelihood.
Completions: parallel lists `tokens`, `token_logprobs`, `top_logprobs` (`{token: logprob}` holding the top
k plus the chosen token, as vLLM does) and `text_offset`. JSON has no -inf, so values are clamped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from tpuserve.serving.api.responses import ChatLogprob, ChatLogprobs, ChatLogprobsContent, CompletionLogprobs
from tpuserve.serving.outputs import CompletionOutput, Logprob, PositionLogprobs

MIN_LOGPROB = -9999.0


def visible_logprobs(
    completion: CompletionOutput, include_stop_str_in_output: bool
) -> tuple[list[int], list[PositionLogprobs]]:
    """Token ids and logprobs of the text the client sees: an EOS or stop token that ended the output is
    not part of the text, so it is left out, and the listed tokens spell the content exactly."""
    ended_on_token = completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str)
    end = len(completion.token_ids) - (ended_on_token and not include_stop_str_in_output)
    return completion.token_ids[:end], (completion.logprobs or [])[:end]


def clamp(logprob: float) -> float:
    return MIN_LOGPROB if math.isnan(logprob) else max(logprob, MIN_LOGPROB)


def _token_text(logprob: Logprob) -> str:
    return logprob.decoded_token or ""


def _chat_entry(logprob: Logprob) -> ChatLogprob:
    text = _token_text(logprob)
    return ChatLogprob(token=text, logprob=clamp(logprob.logprob), bytes=list(text.encode("utf-8")))


def chat_logprobs(
    token_ids: Sequence[int], positions: Sequence[PositionLogprobs], top_k: int
) -> ChatLogprobs:
    content = []
    for token_id, position in zip(token_ids, positions, strict=True):
        top = sorted(
            (lp for lp in position.values() if lp.rank is not None and lp.rank <= top_k),
            key=lambda lp: lp.rank,
        )
        entry = _chat_entry(position[token_id])
        content.append(
            ChatLogprobsContent(**entry.model_dump(), top_logprobs=[_chat_entry(lp) for lp in top])
        )
    return ChatLogprobs(content=content)


def completion_logprobs(
    token_ids: Sequence[int],
    positions: Sequence[PositionLogprobs | None],
    first_offset: int,
    decode: Callable[[int], str],
) -> CompletionLogprobs:
    """`positions[i]` scores `token_ids[i]`; None (the first prompt token) has no logprob, like vLLM's."""
    result = CompletionLogprobs()
    offset = first_offset
    for token_id, position in zip(token_ids, positions, strict=True):
        text = decode(token_id) if position is None else _token_text(position[token_id])
        result.tokens.append(text)
        result.text_offset.append(offset)
        offset += len(text)
        if position is None:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
        else:
            result.token_logprobs.append(clamp(position[token_id].logprob))
            result.top_logprobs.append({_token_text(lp): clamp(lp.logprob) for lp in position.values()})
    return result


def prompt_logprobs_json(positions: Sequence[PositionLogprobs | None] | None) -> list[dict | None] | None:
    """vLLM's `prompt_logprobs` field: per prompt token `{token_id: {logprob, rank, decoded_token}}`."""
    if positions is None:
        return None
    return [
        None
        if position is None
        else {
            token_id: {"logprob": clamp(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
            for token_id, lp in position.items()
        }
        for position in positions
    ]
