"""Scheduler policy without a model: budgets, chunking, priority, prefix reuse and preemption."""

from __future__ import annotations

from tpuserve.serving.config import EngineConfig
from tpuserve.serving.core.page_allocator import PageAllocator
from tpuserve.serving.core.request import Request, RequestStatus
from tpuserve.serving.core.scheduler import Scheduler
from tpuserve.serving.sampling_params import SamplingParams


def make(num_pages: int = 64, budget: int = 32, max_num_seqs: int = 4, max_model_len: int = 128):
    config = EngineConfig(max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=budget, page_size=4, num_pages=num_pages)
    allocator = PageAllocator(num_pages, 4)
    return Scheduler(config, allocator), allocator


def request(rid: str, n: int, priority: int = 0, start: int = 0) -> Request:
    return Request(rid, list(range(start, start + n)), SamplingParams(), priority=priority, arrival_time=0.0)


def commit(output) -> None:
    """What the engine does after a step: mark tokens computed, sample for completed sequences."""
    for chunk in output.chunks:
        completes = chunk.completes_sequence
        chunk.request.num_computed_tokens += chunk.num_tokens
        if completes:
            chunk.request.output_token_ids.append(7)


def test_budget_chunks_long_prompts_and_decodes_go_first() -> None:
    scheduler, _ = make(budget=32)
    long, short = request("long", 50), request("short", 5)
    scheduler.add(long)
    scheduler.add(short)
    first = scheduler.schedule()
    assert [(c.request.request_id, c.num_tokens) for c in first.chunks] == [("long", 32)]
    commit(first)
    second = scheduler.schedule()
    assert [(c.request.request_id, c.num_tokens) for c in second.chunks] == [("long", 18), ("short", 5)]
    assert second.chunks[0].completes_sequence and second.chunks[1].completes_sequence
    commit(second)
    third = scheduler.schedule()
    assert [(c.request.request_id, c.num_tokens) for c in third.chunks] == [("long", 1), ("short", 1)]


def test_priority_orders_admission() -> None:
    scheduler, _ = make(budget=8, max_num_seqs=1)
    scheduler.add(request("late-urgent", 4, priority=-1))
    scheduler.add(request("normal", 4, priority=0))
    assert [c.request.request_id for c in scheduler.schedule().chunks] == ["late-urgent"]


def test_prefix_pages_are_reused() -> None:
    scheduler, allocator = make(budget=64)
    first = request("a", 20)
    scheduler.add(first)
    commit(scheduler.schedule())
    allocator.register_full_pages(first.all_token_ids[: first.num_computed_tokens], first.pages)
    second = request("b", 20)
    scheduler.add(second)
    chunks = scheduler.schedule().chunks
    new = next(c for c in chunks if c.request is second)
    assert second.num_cached_tokens == 16 and new.num_tokens == 4
    assert second.pages[:4] == first.pages[:4]
    scored = Request("c", list(range(20)), SamplingParams(prompt_logprobs=1), arrival_time=0.0)
    scheduler.add(scored)
    chunks = scheduler.schedule().chunks  # prompt logprobs need every prompt token run, cached or not
    assert next(c for c in chunks if c.request is scored).num_tokens == 20 and scored.num_cached_tokens == 0


def test_preemption_frees_latest_admitted_and_recomputes() -> None:
    # 12 usable pages of 4 tokens; two 20-token prompts need 10 pages, then decodes need more.
    scheduler, allocator = make(num_pages=13, budget=64, max_model_len=40)
    a, b = request("a", 20), request("b", 20, start=100)
    scheduler.add(a)
    scheduler.add(b)
    preempted = []
    for _ in range(12):
        output = scheduler.schedule()
        preempted += output.preempted
        commit(output)
        held = sum(len(r.pages) for r in scheduler.running)
        assert held == allocator.num_pages - 1 - allocator.num_free_pages
    assert preempted and preempted[0] is b
    assert a.status is RequestStatus.RUNNING and len(a.output_token_ids) == 12
    assert scheduler.num_preemptions == len(preempted)


def test_finish_releases_pages_wherever_the_request_is() -> None:
    scheduler, allocator = make()
    running, waiting = request("r", 10), request("w", 10, start=50)
    scheduler.add(running)
    commit(scheduler.schedule())
    scheduler.add(waiting)
    scheduler.finish(running, RequestStatus.FINISHED_STOPPED)
    scheduler.finish(waiting, RequestStatus.FINISHED_ABORTED)
    assert not scheduler.has_work
    assert (running.finish_reason, waiting.finish_reason) == ("stop", "abort")
    assert allocator.num_free_pages == allocator.num_pages - 1


def launch(output) -> None:
    """What the engine does when it dispatches a step: tokens computed, sampled tokens in flight."""
    for chunk in output.chunks:
        completes = chunk.completes_sequence
        chunk.request.num_computed_tokens += chunk.num_tokens
        chunk.request.num_in_flight += completes


def land(req: Request) -> None:
    """The host reads one of the request's tokens in flight."""
    req.num_in_flight -= 1
    req.output_token_ids.append(7)


def test_async_schedules_tokens_in_flight_but_not_past_a_length_limit() -> None:
    scheduler, _ = make(max_model_len=6)
    capped = Request("capped", [1, 2, 3], SamplingParams(max_tokens=2), arrival_time=0.0)
    long = request("long", 3, start=10)  # stops at the 6-token context
    for req in (capped, long):
        scheduler.add(req)
    launch(scheduler.schedule())
    second = scheduler.schedule()  # before the first tokens land: each decodes its token in flight
    assert [(c.request.request_id, c.num_tokens) for c in second.chunks] == [("capped", 1), ("long", 1)]
    assert all(c.completes_sequence for c in second.chunks)
    launch(second)
    for req in (capped, long):
        land(req)
    # capped's token in flight is its second and last; long's is its fifth token, not yet the sixth
    assert capped.last_in_flight(6) and not long.last_in_flight(6)
    third = scheduler.schedule()
    assert [(c.request.request_id, c.num_tokens) for c in third.chunks] == [("long", 1)]
    launch(third)
    land(long)
    assert long.num_tokens == 6 and long.last_in_flight(6)
    assert scheduler.schedule().chunks == []
