"""Helpers shared by the chat and completion handlers: SSE framing, usage, and merging engine streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from pydantic import BaseModel

from tpuserve.serving.api.responses import PromptTokensDetails, UsageInfo
from tpuserve.serving.outputs import RequestOutput

DONE = "data: [DONE]\n\n"


def sse(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


def usage_info(outputs: Sequence[RequestOutput]) -> UsageInfo:
    """Totals over every prompt and every one of the n choices (OpenAI sums completion tokens)."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    cached = sum(o.num_cached_tokens for o in outputs)
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


async def merge(streams: Sequence[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several requests' outputs as they arrive, tagged with the stream's index.

    Leaving early (disconnect, error) cancels every pump, which closes each engine stream and so aborts
    its request.
    """
    if len(streams) == 1:  # the common case (n = 1, one prompt): no pump task and queue hop per token
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in stream:
                await queue.put((index, output))
        except Exception as error:
            await queue.put((index, error))
        else:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def final_outputs(streams: Sequence[AsyncIterator[RequestOutput]]) -> list[RequestOutput]:
    """Run the requests concurrently and return each one's last (finished) output, in order."""
    finals: list[RequestOutput | None] = [None] * len(streams)
    async for index, output in merge(streams):
        finals[index] = output
    return finals
