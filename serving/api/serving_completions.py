"""POST /v1/completions: one engine request per prompt, n choices each, indexed `prompt * n + choice`.

With `echo`, the prompt text (and, when logprobs are asked for, the prompt's logprobs, the first one null)
comes before the generated text, as in vLLM. Streams interleave the prompts as their tokens arrive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable

from tpuserve.serving.api.context import ServingContext, new_request_id, now
from tpuserve.serving.api.errors import sse_error
from tpuserve.serving.api.logprobs_format import completion_logprobs, prompt_logprobs_json, visible_logprobs
from tpuserve.serving.api.params import resolve_max_tokens, sampling_params
from tpuserve.serving.api.prompts import TokensPrompt, check_fits_context, completion_prompts
from tpuserve.serving.api.protocol import CompletionRequest
from tpuserve.serving.api.responses import CompletionChoice, CompletionLogprobs, CompletionResponse
from tpuserve.serving.api.streams import DONE, final_outputs, merge, sse, usage_info
from tpuserve.serving.outputs import CompletionOutput, PositionLogprobs, RequestOutput


@dataclasses.dataclass(frozen=True)
class CompletionJob:
    request: CompletionRequest
    request_id: str
    created: int
    model: str
    prompts: list[TokensPrompt]
    decode: Callable[[list[int]], str]


@dataclasses.dataclass
class _Choice:
    """What one choice shows: the echoed prompt (if any) followed by the generated output."""

    text: str
    token_ids: list[int]
    positions: list[PositionLogprobs | None]


def prepare_completion(
    ctx: ServingContext, request: CompletionRequest
) -> tuple[CompletionJob, list[AsyncIterator[RequestOutput]]]:
    ctx.check_model(request.model)
    prompts = completion_prompts(ctx.tokenizer, request.prompt, request.add_special_tokens, ctx.vocab_size)
    echo_logprobs = request.echo and request.logprobs is not None
    prompt_logprobs = request.logprobs if echo_logprobs else request.prompt_logprobs
    params = []
    for prompt in prompts:
        check_fits_context(len(prompt.token_ids), ctx.max_model_len)
        max_tokens = resolve_max_tokens(
            "max_tokens",
            request.max_tokens,
            len(prompt.token_ids),
            ctx.max_model_len,
            ctx.defaults.get("max_new_tokens"),
        )
        params.append(
            sampling_params(
                request,
                max_tokens=max_tokens,
                logprobs=request.logprobs,
                prompt_logprobs=prompt_logprobs,
                defaults=ctx.defaults,
                max_logprobs=ctx.max_logprobs,
                vocab_size=ctx.vocab_size,
            )
        )
    job = CompletionJob(
        request,
        new_request_id("cmpl", request.request_id),
        now(),
        ctx.model_name,
        prompts,
        ctx.tokenizer.decode,
    )
    streams = [
        ctx.generate(f"{job.request_id}-{i}", prompt, p, request.priority)
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True))
    ]
    return job, streams


def _choice(job: CompletionJob, output: RequestOutput, completion: CompletionOutput) -> _Choice:
    token_ids, positions = visible_logprobs(completion, job.request.include_stop_str_in_output)
    if not job.request.echo:
        return _Choice(completion.text, token_ids, positions)
    prompt_text = output.prompt if output.prompt is not None else job.decode(output.prompt_token_ids)
    return _Choice(
        prompt_text + completion.text,
        output.prompt_token_ids + token_ids,
        (output.prompt_logprobs or []) + positions,
    )


def _logprobs(
    job: CompletionJob, choice: _Choice, start_token: int, start_char: int
) -> CompletionLogprobs | None:
    if job.request.logprobs is None:
        return None
    return completion_logprobs(
        choice.token_ids[start_token:],
        choice.positions[start_token:],
        start_char,
        lambda token_id: job.decode([token_id]),
    )


async def full_response(
    job: CompletionJob, streams: list[AsyncIterator[RequestOutput]]
) -> CompletionResponse:
    finals = await final_outputs(streams)
    asked = job.request.prompt_logprobs is not None  # echo's own prompt logprobs go in `logprobs` only
    choices = []
    for i, output in enumerate(finals):
        for completion in output.outputs:
            choice = _choice(job, output, completion)
            choices.append(
                CompletionChoice(
                    index=i * job.request.n + completion.index,
                    text=choice.text,
                    logprobs=_logprobs(job, choice, 0, 0),
                    finish_reason=completion.finish_reason,
                    stop_reason=completion.stop_reason,
                    prompt_logprobs=prompt_logprobs_json(output.prompt_logprobs if asked else None),
                )
            )
    return CompletionResponse(
        id=job.request_id, created=job.created, model=job.model, choices=choices, usage=usage_info(finals)
    )


async def stream_response(
    job: CompletionJob, streams: list[AsyncIterator[RequestOutput]]
) -> AsyncIterator[str]:
    def chunk(*choices: CompletionChoice, usage=None) -> str:
        return sse(
            CompletionResponse(
                id=job.request_id, created=job.created, model=job.model, choices=list(choices), usage=usage
            )
        )

    n = job.request.n
    num_choices = len(streams) * n
    sent_chars, sent_tokens, done = [0] * num_choices, [0] * num_choices, [False] * num_choices
    finals: list[RequestOutput | None] = [None] * len(streams)
    try:
        async for prompt_index, output in merge(streams):
            finals[prompt_index] = output
            for completion in output.outputs:
                index = prompt_index * n + completion.index
                if done[index]:
                    continue
                choice = _choice(job, output, completion)
                text = choice.text[sent_chars[index] :]
                logprobs = _logprobs(job, choice, sent_tokens[index], sent_chars[index])
                if text or (logprobs and logprobs.tokens):
                    yield chunk(CompletionChoice(index=index, text=text, logprobs=logprobs))
                sent_chars[index], sent_tokens[index] = len(choice.text), len(choice.token_ids)
                if completion.finish_reason is not None:
                    done[index] = True
                    yield chunk(
                        CompletionChoice(
                            index=index,
                            text="",
                            finish_reason=completion.finish_reason,
                            stop_reason=completion.stop_reason,
                        )
                    )
        if job.request.include_usage:
            yield chunk(usage=usage_info(finals))
    except Exception as error:
        yield sse_error(error)
    yield DONE
