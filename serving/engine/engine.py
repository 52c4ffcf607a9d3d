"""The synchronous engine: requests in, one scheduled model step per `step()`, `RequestOutput`s out.

Each step is the scheduler's decision, one `ModelRunner.execute` call, then output processing (tokens
appended, detokenized, stop checks). It knows nothing of HTTP; the offline `LLM` and the async engine
behind the server both drive it.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable

import jax
import numpy as np

from tpuserve.model import LoadedModel
from tpuserve.serving.config import EngineConfig
from tpuserve.serving.core.page_allocator import PageAllocator
from tpuserve.serving.core.request import FinishReason, ParentRequest, Request, RequestStatus
from tpuserve.serving.core.scheduler import Scheduler
from tpuserve.serving.engine.stats import EngineSnapshot, EngineStats
from tpuserve.serving.outputs import RequestOutput
from tpuserve.serving.sampling_params import SamplingParams
from tpuserve.serving.worker.model_runner import ModelRunner, RunnerOutput, SampledTokens


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context (`max_model_len`)."""


@dataclasses.dataclass(frozen=True)
class _Launched:
    """A dispatched step, as its completion needs it."""

    filled: list[tuple[Request, int]]  # requests that filled a page, with their computed-token count after
    output: RunnerOutput  # its tokens still on the device
    num_tokens: int
    num_preempted: int
    host_seconds: float  # engine-thread time spent launching it


class Engine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig, backend: str = "auto") -> None:
        self.config = config
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids = _eos_token_ids(loaded)
        self.allocator = PageAllocator(config.num_pages, config.page_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.allocator)
        eos = self.eos_token_ids[0] if self.eos_token_ids else None
        self.runner = ModelRunner(loaded.model, config, backend, eos)
        self.stats = EngineStats()
        self._requests: dict[str, ParentRequest] = {}
        self._numbers = itertools.count()  # each sequence's random stream when it has no seed
        self._in_flight: _Launched | None = None  # async scheduling: the step running while the host works

    def precompile(self, progress: Callable[[str], None] = lambda label: None) -> None:
        for label in self.runner.precompile():
            progress(label)

    def snapshot(self) -> EngineSnapshot:
        allocator = self.allocator
        return EngineSnapshot(len(self.scheduler.running), self.scheduler.num_waiting, allocator.usage,
                              self.stats.num_preemptions, allocator.stats.queries, allocator.stats.hits)

    @property
    def has_unfinished(self) -> bool:
        """Whether some request is unfinished (a step in flight for finished ones alone is read, and its
        tokens dropped, by the next `step()`)."""
        return bool(self._requests)

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
        prompt: str | None = None, priority: int = 0,
    ) -> ParentRequest:
        """Queue a tokenized prompt (`prompt` is its text, echoed back in outputs when known)."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running")
        ids = [int(t) for t in prompt_token_ids]
        if not ids:
            raise PromptTooLongError("the prompt is empty: at least one token is needed")
        if len(ids) > self.config.max_model_len:
            raise PromptTooLongError(f"the prompt has {len(ids)} tokens, more than this model's maximum "
                                     f"context length of {self.config.max_model_len} tokens")
        params.check_vocab(self.loaded.config.vocab_size)
        numbers = [next(self._numbers) for _ in range(params.n)]
        parent = ParentRequest(request_id, prompt, ids, params, self.tokenizer, numbers, priority)
        self._requests[request_id] = parent
        # Siblings wait until the first sample has computed (and cached) the shared prompt pages.
        parent.siblings_held = params.n > 1 and self.config.enable_prefix_caching
        for child in parent.children[:1] if parent.siblings_held else parent.children:
            self.scheduler.add(child)
        return parent

    def abort(self, request_id: str) -> RequestOutput | None:
        parent = self._requests.get(request_id)
        if parent is None:
            return None
        for child in parent.children:
            if child.finish_reason is None:
                self._finish(child, FinishReason.ABORT)
        return self._output(parent)

    def step(self) -> list[RequestOutput]:
        """Schedule and dispatch one step, and return the outputs of the step that completes: this one, or
        with `async_scheduling` the one before it, read while this one runs on the device."""
        launched = self._launch()
        if self.config.async_scheduling:
            launched, self._in_flight = self._in_flight, launched
        return [] if launched is None else self._complete(launched)

    def _launch(self) -> _Launched | None:
        """Schedule and dispatch a step; its tokens count as in flight until `_complete` reads them."""
        started = time.monotonic()
        schedule = self.scheduler.schedule()
        output = self.runner.execute(schedule)
        if output is None:
            return None
        host_seconds = time.monotonic() - started  # engine-thread work up to the dispatch
        for scored in output.prompt_logprobs:
            scored.request.parent.record_prompt_logprobs(scored.first_position, *scored.logprobs)
        filled, page_size = [], self.config.page_size
        for chunk in schedule.chunks:
            request = chunk.request
            request.first_scheduled_time = request.first_scheduled_time or started
            full_pages = request.num_computed_tokens // page_size
            request.num_computed_tokens += chunk.num_tokens
            if request.num_computed_tokens // page_size > full_pages:
                filled.append((request, request.num_computed_tokens))
        for request in output.sampled:
            request.num_in_flight += 1
        return _Launched(filled, output, schedule.num_tokens, len(schedule.preempted), host_seconds)

    def _complete(self, launched: _Launched) -> list[RequestOutput]:
        """Read a launched step's tokens and apply them: cache its full pages, extend, detokenize, stop."""
        output = launched.output
        tokens = None if output.tokens is None else jax.tree.map(np.asarray, output.tokens)
        ready = time.monotonic()
        for request, num_computed in launched.filled:  # only they have new pages for the prefix cache
            if request.status is RequestStatus.RUNNING:  # not preempted, finished or aborted since
                self.allocator.register_full_pages(request.all_token_ids[:num_computed], request.pages)
        touched = {}
        for i, request in enumerate(output.sampled):
            request.num_in_flight -= 1
            if request.finish_reason is None:  # else it stopped or was aborted while this token ran
                self._append_token(request, tokens, i)
                touched[request.parent.request_id] = request.parent
        host_seconds = launched.host_seconds + time.monotonic() - ready
        self.stats.record_step(launched.num_tokens, host_seconds, launched.num_preempted)
        return [self._output(parent) for parent in touched.values()]

    def _append_token(self, request: Request, tokens: SampledTokens, i: int) -> None:
        params = request.sampling_params
        token = int(tokens.token_ids[i])
        request.output_token_ids.append(token)
        now = time.monotonic()
        if request.first_token_time is None:
            request.first_token_time = now
            self.stats.record_first_token(now - request.arrival_time)
            if request.parent.siblings_held:
                self._admit_siblings(request.parent)
        else:
            self.stats.record_inter_token(now - request.last_token_time)
        request.last_token_time = now
        if request.logprobs is not None:
            request.parent.record_token_logprobs(request, token, *(field[i] for field in tokens.logprobs))
        num_outputs = len(request.output_token_ids)
        may_stop = num_outputs >= params.min_tokens
        if may_stop and not params.ignore_eos and token in self.eos_token_ids:
            reason = (FinishReason.STOP, None)
        elif may_stop and token in params.stop_token_ids:
            reason = (FinishReason.STOP, token)
        else:
            reason = None
        hide_stop_token = reason is not None and not params.include_stop_str_in_output
        update = request.detokenizer.add_tokens([] if hide_stop_token else [token])
        if reason is None and update.stopped:
            reason = (FinishReason.STOP, update.stop_str)
        if reason is None and request.ends_by_length(num_outputs, self.config.max_model_len):
            reason = (FinishReason.LENGTH, None)
        if reason is not None:
            if not update.stopped:
                request.detokenizer.finish()
            self._finish(request, *reason)

    def _admit_siblings(self, parent: ParentRequest) -> None:
        parent.siblings_held = False
        for child in parent.children[1:]:
            if child.finish_reason is None:
                self.scheduler.add(child)

    def _finish(self, request: Request, reason: FinishReason, stop_reason: int | str | None = None) -> None:
        request.stop_reason = stop_reason
        self.scheduler.finish(request, RequestStatus(reason))

    def _output(self, parent: ParentRequest) -> RequestOutput:
        if parent.finished:
            parent.finished_time = parent.finished_time or time.monotonic()
            self._requests.pop(parent.request_id, None)
        return parent.output()


def _eos_token_ids(loaded: LoadedModel) -> tuple[int, ...]:
    """The tokenizer's EOS plus any the generation config adds (Llama 3 lists several)."""
    configured = loaded.generation_config.get("eos_token_id")
    ids = [loaded.tokenizer.eos_token_id]
    ids += configured if isinstance(configured, list) else [configured]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))
