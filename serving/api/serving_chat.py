"""POST /v1/chat/completions: messages -> chat template -> engine -> one response or an SSE stream.

A stream is, per OpenAI: a role chunk per choice (sent with the first engine output), content deltas
(empty ones skipped), exactly one finish chunk per choice with an empty delta, an optional usage chunk
with `choices: []`, then [DONE].
Everything that can be rejected is checked before the stream starts, so those errors are real 400s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from tpuserve.serving.api.context import ServingContext, new_request_id, now
from tpuserve.serving.api.errors import APIError, sse_error
from tpuserve.serving.api.logprobs_format import chat_logprobs, prompt_logprobs_json, visible_logprobs
from tpuserve.serving.api.params import resolve_max_tokens, sampling_params
from tpuserve.serving.api.prompts import TokensPrompt, check_fits_context, message_text
from tpuserve.serving.api.protocol import ChatCompletionRequest
from tpuserve.serving.api.responses import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatStreamChoice,
    DeltaMessage,
    ResponseMessage,
)
from tpuserve.serving.api.streams import DONE, final_outputs, sse, usage_info
from tpuserve.serving.outputs import CompletionOutput, RequestOutput

ROLE = "assistant"


@dataclasses.dataclass(frozen=True)
class ChatJob:
    """A validated request on its way to the engine."""

    request: ChatCompletionRequest
    request_id: str
    created: int
    model: str
    top_logprobs: int | None  # None: no logprobs
    echo: str  # the final assistant message, when `echo` repeats it


def prepare_chat(
    ctx: ServingContext, request: ChatCompletionRequest
) -> tuple[ChatJob, AsyncIterator[RequestOutput]]:
    ctx.check_model(request.model)
    _check_supported(request)
    text = ctx.render_chat(request)
    token_ids = ctx.tokenizer.encode(text, add_special_tokens=request.add_special_tokens)
    check_fits_context(len(token_ids), ctx.max_model_len)
    name, requested = request.requested_max_tokens
    max_tokens = resolve_max_tokens(
        name, requested, len(token_ids), ctx.max_model_len, ctx.defaults.get("max_new_tokens")
    )
    top_logprobs = _top_logprobs(request, ctx.max_logprobs)
    params = sampling_params(
        request,
        max_tokens=max_tokens,
        logprobs=top_logprobs,
        prompt_logprobs=request.prompt_logprobs,
        defaults=ctx.defaults,
        max_logprobs=ctx.max_logprobs,
        vocab_size=ctx.vocab_size,
    )
    last = request.messages[-1]
    echo = message_text(last) if request.echo and last.role == ROLE else ""
    job = ChatJob(
        request, new_request_id("chatcmpl", request.request_id), now(), ctx.model_name, top_logprobs, echo
    )
    return job, ctx.generate(job.request_id, TokensPrompt(token_ids, text), params, request.priority)


def _check_supported(request: ChatCompletionRequest) -> None:
    if request.response_format and request.response_format.get("type", "text") != "text":
        raise APIError("response_format other than text is not supported yet", param="response_format")
    if request.tool_choice not in (None, "none"):
        raise APIError("tool calling is not supported yet: tool_choice must be none", param="tool_choice")


def _top_logprobs(request: ChatCompletionRequest, max_logprobs: int) -> int | None:
    if not request.logprobs:
        return None
    k = request.top_logprobs or 0
    if not 0 <= k <= max_logprobs:
        raise APIError(f"top_logprobs must be between 0 and {max_logprobs}, got {k}", param="top_logprobs")
    return k


def _logprobs(job: ChatJob, completion: CompletionOutput, start: int = 0) -> ChatLogprobs | None:
    if job.top_logprobs is None:
        return None
    token_ids, positions = visible_logprobs(completion, job.request.include_stop_str_in_output)
    return chat_logprobs(token_ids[start:], positions[start:], job.top_logprobs)


async def full_response(job: ChatJob, outputs: AsyncIterator[RequestOutput]) -> ChatCompletionResponse:
    [final] = await final_outputs([outputs])
    choices = [
        ChatChoice(
            index=completion.index,
            message=ResponseMessage(role=ROLE, content=job.echo + completion.text),
            logprobs=_logprobs(job, completion),
            finish_reason=completion.finish_reason,
            stop_reason=completion.stop_reason,
        )
        for completion in final.outputs
    ]
    return ChatCompletionResponse(
        id=job.request_id,
        created=job.created,
        model=job.model,
        choices=choices,
        usage=usage_info([final]),
        prompt_logprobs=prompt_logprobs_json(final.prompt_logprobs),
    )


async def stream_response(job: ChatJob, outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[str]:
    def chunk(*choices: ChatStreamChoice, **usage) -> str:
        return sse(
            ChatCompletionChunk(
                id=job.request_id, created=job.created, model=job.model, choices=list(choices), **usage
            )
        )

    n = job.request.n
    try:
        sent_text, sent_tokens, done = [0] * n, [0] * n, [False] * n
        final = None
        started = False
        async for final in outputs:
            if not started:
                started = True
                # Like vLLM, the role chunk goes out with the first engine output (after prefill), so
                # clients measuring time-to-first-chunk measure time to the first token.
                for index in range(n):
                    yield chunk(ChatStreamChoice(index=index, delta=DeltaMessage(role=ROLE, content="")))
                    if job.echo:
                        yield chunk(ChatStreamChoice(index=index, delta=DeltaMessage(content=job.echo)))
            for completion in final.outputs:
                i = completion.index
                if done[i]:
                    continue
                text = completion.text[sent_text[i] :]
                logprobs = _logprobs(job, completion, sent_tokens[i])
                if text or (logprobs and logprobs.content):
                    yield chunk(
                        ChatStreamChoice(index=i, delta=DeltaMessage(content=text), logprobs=logprobs)
                    )
                sent_text[i], sent_tokens[i] = len(completion.text), len(completion.token_ids)
                if completion.finish_reason is not None:
                    done[i] = True
                    yield chunk(
                        ChatStreamChoice(
                            index=i,
                            delta=DeltaMessage(),
                            finish_reason=completion.finish_reason,
                            stop_reason=completion.stop_reason,
                        )
                    )
        if job.request.include_usage:
            yield chunk(usage=usage_info([final]))
    except Exception as error:
        yield sse_error(error)
    yield DONE
