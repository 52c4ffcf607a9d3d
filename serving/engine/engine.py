"""The synchronous engine: requests in, one scheduled model step per `step()`, `RequestOutput`s out.

It knows nothing of HTTP; the offline `LLM` and the async engine behind the server both drive it.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from tpuserve.model import LoadedModel
from tpuserve.serving.config import EngineConfig
from tpuserve.serving.core.page_allocator import PageAllocator
from tpuserve.serving.core.scheduler import Scheduler, SchedulerOutput
from tpuserve.serving.engine.request import FinishReason, Request, RequestStatus
from tpuserve.serving.engine.request_group import RequestGroup, Sequence, finish_sequence
from tpuserve.serving.engine.stats import EngineStats
from tpuserve.serving.outputs import RequestOutput
from tpuserve.serving.sample.logprobs import TokenLogprobs
from tpuserve.serving.sample.metadata import SamplingMetadata
from tpuserve.serving.sample.sampler import SamplerOutput
from tpuserve.serving.sampling_params import SamplingParams
from tpuserve.serving.worker.input_batch import PreparedStep, prepare_step
from tpuserve.serving.worker.model_runner import ModelRunner


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context (`max_model_len`)."""


class SampledTokens(NamedTuple):
    """One step's sampled tokens (row i: `step.sampled[i]`), and their logprobs when some row asked."""

    token_ids: np.ndarray
    logprobs: TokenLogprobs | None

    @classmethod
    def fetching(cls, output: SamplerOutput, with_logprobs: bool) -> SampledTokens:
        """The device arrays the host will read, their copies to the host already started.

        Started at dispatch, each copy runs as soon as its step is done rather than when the host asks (with
        async scheduling, while the next step already runs). Unrequested logprobs stay on the device: one
        transfer per step instead of five.
        """
        tokens = cls(output.token_ids, output.logprobs if with_logprobs else None)
        for array in jax.tree.leaves(tokens):
            array.copy_to_host_async()
        return tokens


@dataclasses.dataclass(frozen=True)
class _Launched:
    """A dispatched step, as its completion needs it."""

    filled: list[tuple[Request, int]]  # requests that filled a page, with their computed-token count after
    sampled: list[tuple[RequestGroup, Sequence]]  # row i of `tokens` is a token of sampled[i]
    tokens: SampledTokens | None  # still on the device
    num_tokens: int
    num_preempted: int
    host_seconds: float  # engine-thread time spent launching it

    @property
    def rows(self) -> dict[Request, int]:
        """Each sampled request's row in `tokens`."""
        return {seq.request: i for i, (_, seq) in enumerate(self.sampled)}


class Engine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig, backend: str = "auto") -> None:
        self.config = config
        self.model_config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids = _eos_token_ids(loaded)
        self.allocator = PageAllocator(config.num_pages, config.page_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.allocator)
        self.runner = ModelRunner(loaded.model, config, backend)
        self.stats = EngineStats()
        self._groups: dict[str, RequestGroup] = {}
        self._sequences: dict[str, tuple[RequestGroup, Sequence]] = {}
        self._numbers: dict[str, int] = {}
        self._counter = itertools.count()
        self._free_slots = list(range(config.max_num_seqs - 1, -1, -1))
        self._in_flight: _Launched | None = None  # async scheduling: the step running while the host works

    def precompile(self, progress: Callable[[str], None] = lambda label: None) -> None:
        for label in self.runner.precompile():
            progress(label)

    @property
    def has_unfinished(self) -> bool:
        """Whether some request is unfinished (a step in flight for finished ones alone is read, and its
        tokens dropped, by the next `step()`)."""
        return bool(self._groups)

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
        prompt: str | None = None, priority: int = 0,
    ) -> RequestGroup:
        """Queue a tokenized prompt (`prompt` is its text, echoed back in outputs when known)."""
        if request_id in self._groups:
            raise ValueError(f"request id {request_id!r} is already running")
        ids = [int(t) for t in prompt_token_ids]
        if not ids:
            raise PromptTooLongError("the prompt is empty: at least one token is needed")
        if len(ids) > self.config.max_model_len:
            raise PromptTooLongError(f"the prompt has {len(ids)} tokens, more than this model's maximum "
                                     f"context length of {self.config.max_model_len} tokens")
        params.check_vocab(self.model_config.vocab_size)
        group = RequestGroup(request_id, prompt, ids, params, self.tokenizer, priority)
        self._groups[request_id] = group
        for seq in group.sequences:
            self._sequences[seq.request.request_id] = (group, seq)
            self._numbers[seq.request.request_id] = next(self._counter)
        # Siblings wait until the first sample has computed (and cached) the shared prompt pages.
        group.siblings_held = params.n > 1 and self.config.enable_prefix_caching
        for seq in group.sequences[:1] if group.siblings_held else group.sequences:
            self.scheduler.add(seq.request)
        return group

    def abort(self, request_id: str) -> RequestOutput | None:
        group = self._groups.get(request_id)
        if group is None:
            return None
        for seq in group.sequences:
            if seq.request.finish_reason is None:
                finish_sequence(seq, FinishReason.ABORT)
                self._retire(seq)
        return self._finish_group(group)

    def step(self) -> list[RequestOutput]:
        """Schedule and dispatch one step, and return the outputs of the step that completes: this one, or
        with `async_scheduling` the one before it, read while this one runs on the device."""
        schedule = self.scheduler.schedule()
        for request in schedule.preempted:
            self._release_slot(self._sequences[request.request_id][1])
        launched = self._launch(schedule) if schedule.chunks else None
        if self.config.async_scheduling:
            launched, self._in_flight = self._in_flight, launched
        return [] if launched is None else self._complete(launched)

    def _launch(self, schedule: SchedulerOutput) -> _Launched:
        """Dispatch the step's programs; its tokens count as in flight until `_complete` reads them."""
        started = time.monotonic()
        for chunk in schedule.chunks:
            self._ensure_slot(self._sequences[chunk.request.request_id][1], started)
        step = prepare_step(schedule, self.config, {} if self._in_flight is None else self._in_flight.rows)
        hidden, sample_hidden = self.runner.forward(step.inputs)
        sampled = self._sample(sample_hidden, step)
        host_seconds = time.monotonic() - started  # engine-thread work up to the dispatch
        self._record_prompt_logprobs(hidden, step)
        filled, page_size = [], self.config.page_size
        for chunk in schedule.chunks:
            request = chunk.request
            full_pages = request.num_computed_tokens // page_size
            request.num_computed_tokens += chunk.num_tokens
            if request.num_computed_tokens // page_size > full_pages:
                filled.append((request, request.num_computed_tokens))
        for chunk in step.sampled:
            chunk.request.num_in_flight += 1
        return _Launched(
            filled=filled,
            sampled=[self._sequences[chunk.request.request_id] for chunk in step.sampled],
            tokens=sampled,
            num_tokens=schedule.num_tokens,
            num_preempted=len(schedule.preempted),
            host_seconds=host_seconds,
        )

    def _complete(self, launched: _Launched) -> list[RequestOutput]:
        """Read a launched step's tokens and apply them: cache its full pages, extend, detokenize, stop."""
        tokens = None if launched.tokens is None else jax.tree.map(np.asarray, launched.tokens)
        ready = time.monotonic()
        for request, num_computed in launched.filled:  # only they have new pages for the prefix cache
            if request.status is RequestStatus.RUNNING:  # not preempted, finished or aborted since
                self.allocator.register_full_pages(request.all_token_ids[:num_computed], request.pages)
        touched = {}
        for i, (group, seq) in enumerate(launched.sampled):
            seq.request.num_in_flight -= 1
            if seq.request.finish_reason is None:  # else it stopped or was aborted while this token ran
                self._append_token(group, seq, tokens, i)
                touched[group.request_id] = group
        host_seconds = launched.host_seconds + time.monotonic() - ready
        self.stats.record_step(launched.num_tokens, host_seconds, launched.num_preempted)
        return [self._finish_group(g) if g.finished else g.output() for g in touched.values()]

    def _sample(self, sample_hidden: jax.Array, step: PreparedStep) -> SampledTokens | None:
        """Dispatches sampling; the fields are still device arrays (fetched once, after dispatch)."""
        if not step.sampled:
            return None
        seqs = [self._sequences[c.request.request_id][1] for c in step.sampled]
        meta = SamplingMetadata.from_params(
            [s.request.sampling_params for s in seqs],
            num_rows=step.num_sample_rows,
            slot_ids=[s.slot for s in seqs],
            output_lens=[s.request.num_output_tokens for s in seqs],
            request_numbers=[self._numbers[s.request.request_id] for s in seqs],
            engine_seed=self.config.seed,
        )
        output = self.runner.sample(sample_hidden, meta)
        return SampledTokens.fetching(output, with_logprobs=bool(np.any(meta.num_logprobs >= 0)))

    def _record_prompt_logprobs(self, hidden: jax.Array, step: PreparedStep) -> None:
        if not step.prompt_logprobs:
            return
        rows = np.concatenate([p.rows for p in step.prompt_logprobs])
        targets = np.concatenate([p.targets for p in step.prompt_logprobs])
        result = self.runner.prompt_logprobs(hidden, rows, targets)
        start = 0
        for part in step.prompt_logprobs:
            stop = start + len(part.rows)
            group = self._sequences[part.chunk.request.request_id][0]
            group.record_prompt_logprobs(part.first_position, *(a[start:stop] for a in result))
            start = stop

    def _append_token(self, group: RequestGroup, seq: Sequence, tokens: SampledTokens, i: int) -> None:
        request, params = seq.request, seq.request.sampling_params
        token = int(tokens.token_ids[i])
        request.output_token_ids.append(token)
        now = time.monotonic()
        if request.first_token_time is None:
            request.first_token_time = now
            self.stats.record_first_token(now - group.metrics.arrival_time)
            if group.siblings_held:
                self._admit_siblings(group)
        else:
            self.stats.record_inter_token(now - (group.metrics.last_token_time or now))
        group.metrics.first_token_time = group.metrics.first_token_time or now
        group.metrics.last_token_time = now
        if seq.logprobs is not None:
            group.record_token_logprobs(seq, token, *(field[i] for field in tokens.logprobs))
        num_outputs = len(request.output_token_ids)
        may_stop = num_outputs >= params.min_tokens
        if may_stop and not params.ignore_eos and token in self.eos_token_ids:
            reason = (FinishReason.STOP, None)
        elif may_stop and token in params.stop_token_ids:
            reason = (FinishReason.STOP, token)
        else:
            reason = None
        hide_stop_token = reason is not None and not params.include_stop_str_in_output
        update = seq.detokenizer.add_tokens([] if hide_stop_token else [token])
        if reason is None and update.stopped:
            reason = (FinishReason.STOP, update.stop_str)
        if reason is None and request.ends_by_length(num_outputs, self.config.max_model_len):
            reason = (FinishReason.LENGTH, None)
        if reason is not None:
            if not update.stopped:
                seq.detokenizer.finish()
            finish_sequence(seq, *reason)
            self._retire(seq)

    def _admit_siblings(self, group: RequestGroup) -> None:
        group.siblings_held = False
        for seq in group.sequences[1:]:
            if seq.request.finish_reason is None:
                self.scheduler.add(seq.request)

    def _ensure_slot(self, seq: Sequence, now: float) -> None:
        if seq.slot is not None:
            return
        seq.slot = self._free_slots.pop()
        request = seq.request
        eos = None if not self.eos_token_ids else self.eos_token_ids[0]
        self.runner.admit(
            seq.slot, request.sampling_params, request.prompt_token_ids, request.output_token_ids, eos
        )
        group = self._sequences[request.request_id][0]
        group.metrics.first_scheduled_time = group.metrics.first_scheduled_time or now

    def _release_slot(self, seq: Sequence) -> None:
        if seq.slot is not None:
            self._free_slots.append(seq.slot)
            seq.slot = None

    def _retire(self, seq: Sequence) -> None:
        self.scheduler.finish(seq.request)
        self._release_slot(seq)

    def _finish_group(self, group: RequestGroup) -> RequestOutput:
        if group.finished:
            group.metrics.finished_time = group.metrics.finished_time or time.monotonic()
            self._groups.pop(group.request_id, None)
            for seq in group.sequences:
                self._sequences.pop(seq.request.request_id, None)
                self._numbers.pop(seq.request.request_id, None)
        return group.output()


def _eos_token_ids(loaded: LoadedModel) -> tuple[int, ...]:
    """The tokenizer's EOS plus any the generation config adds (Llama 3 lists several)."""
    configured = loaded.generation_config.get("eos_token_id")
    ids = [loaded.tokenizer.eos_token_id]
    ids += configured if isinstance(configured, list) else [configured]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))
