"""Page allocator: a stateful model check of ownership and prefix hits, plus direct LRU/rule tests."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tpuserve.serving.core.page_allocator import (
    NULL_PAGE,
    OutOfPagesError,
    PageAllocator,
    PageNotHeldError,
    page_hashes,
)

PAGE_SIZE = 2
NUM_PAGES = 10


@dataclass
class Seq:
    tokens: list[int]
    pages: list[int]
    salt: str | None


def pages_for(num_tokens: int) -> int:
    return -(-num_tokens // PAGE_SIZE)


class AllocatorModel(RuleBasedStateMachine):
    """Drives the allocator like an engine would and keeps an independent record of page contents.

    `content[page]` is (salt, every token up to the end of that page) as last written by a
    sequence that computed it; a prefix hit is only correct if that equals the asking prompt's prefix.
    A two-token alphabet makes shared prefixes, and so hits and evictions, frequent.
    """

    def __init__(self) -> None:
        super().__init__()
        self.alloc = PageAllocator(NUM_PAGES, PAGE_SIZE)
        self.seqs: list[Seq] = []
        self.content: dict[int, tuple[str | None, tuple[int, ...]]] = {}

    def held(self) -> Counter[int]:
        return Counter(page for seq in self.seqs for page in seq.pages)

    def take_fresh(self, n: int) -> list[int] | None:
        held, available = self.held(), self.alloc.num_free_pages
        try:
            pages = self.alloc.allocate(n)
        except OutOfPagesError:
            assert n > available
            return None
        assert len(set(pages)) == n and NULL_PAGE not in pages
        assert not set(pages) & set(held), "a held page was handed out again"
        return pages

    def compute(self, seq: Seq, start: int) -> None:
        """Write KV for tokens[start:] into the sequence's pages, then register the full ones."""
        for i in range(start // PAGE_SIZE, pages_for(len(seq.tokens))):
            self.content[seq.pages[i]] = (seq.salt, tuple(seq.tokens[: (i + 1) * PAGE_SIZE]))
        self.alloc.register_full_pages(seq.tokens, seq.pages, seq.salt)

    @rule(tokens=st.lists(st.integers(1, 2), min_size=1, max_size=9), salt=st.sampled_from([None, "lora"]))
    def add_request(self, tokens: list[int], salt: str | None) -> None:
        probed = self.alloc.num_cached_tokens(tokens, salt)
        cached, num_cached = self.alloc.match_prefix(tokens, salt)
        assert num_cached == probed == len(cached) * PAGE_SIZE <= len(tokens) - 1
        for i, page in enumerate(cached):
            assert self.content[page] == (salt, tuple(tokens[: (i + 1) * PAGE_SIZE]))
        fresh = self.take_fresh(pages_for(len(tokens)) - len(cached))
        if fresh is None:
            self.alloc.free(cached)
            return
        seq = Seq(list(tokens), cached + fresh, salt)
        self.seqs.append(seq)
        self.compute(seq, num_cached)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), new_tokens=st.lists(st.integers(1, 2), min_size=1, max_size=3))
    def decode(self, data: st.DataObject, new_tokens: list[int]) -> None:
        seq = data.draw(st.sampled_from(self.seqs))
        extra = pages_for(len(seq.tokens) + len(new_tokens)) - len(seq.pages)
        fresh = self.take_fresh(extra)
        if fresh is None:
            return
        start = len(seq.tokens)
        seq.tokens += new_tokens
        seq.pages += fresh
        self.compute(seq, start)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def fork_full_pages(self, data: st.DataObject) -> None:
        """n > 1 sampling: a sibling shares the parent's full pages and writes only its own."""
        parent = data.draw(st.sampled_from(self.seqs))
        num_full = len(parent.tokens) // PAGE_SIZE
        self.alloc.fork(parent.pages[:num_full])
        self.seqs.append(Seq(parent.tokens[: num_full * PAGE_SIZE], parent.pages[:num_full], parent.salt))

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        seq = self.seqs.pop(data.draw(st.integers(0, len(self.seqs) - 1)))
        self.alloc.free(seq.pages)

    @rule(page=st.integers(0, NUM_PAGES - 1))
    def free_unheld_page_raises(self, page: int) -> None:
        if page in self.held():
            return
        before = self.alloc.num_free_pages
        with pytest.raises(PageNotHeldError):
            self.alloc.free([page])
        assert self.alloc.num_free_pages == before

    @rule()
    def drain_pool(self) -> None:
        """Every page nobody holds must be obtainable, cached or not; then the pool is empty."""
        pages = self.take_fresh(self.alloc.num_free_pages)
        assert set(pages) == set(range(1, NUM_PAGES)) - set(self.held())
        with pytest.raises(OutOfPagesError):
            self.alloc.allocate(1)
        self.alloc.free(pages)

    @rule()
    def reset_cache(self) -> None:
        free_before = self.alloc.num_free_pages
        assert self.alloc.reset_prefix_cache() <= free_before
        assert self.alloc.num_free_pages == free_before

    @invariant()
    def refcounts_match_holders(self) -> None:
        held = self.held()
        assert NULL_PAGE not in held and self.alloc.refcount(NULL_PAGE) == 0
        for page in range(NUM_PAGES):
            assert self.alloc.refcount(page) == held[page]
        assert self.alloc.num_free_pages == NUM_PAGES - 1 - len(held)
        assert self.alloc.usage == pytest.approx(len(held) / (NUM_PAGES - 1))
        assert 0 <= self.alloc.stats.hits <= self.alloc.stats.queries


TestAllocatorModel = AllocatorModel.TestCase
TestAllocatorModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def cache(alloc: PageAllocator, tokens: list[int], salt: str | None = None) -> list[int]:
    """Compute a prompt from scratch, register it and finish it: its full pages become evictable."""
    pages = alloc.allocate(pages_for(len(tokens)))
    alloc.register_full_pages(tokens, pages, salt)
    alloc.free(pages)
    return pages


def test_lru_evicts_least_recently_used_prefix_first() -> None:
    alloc = PageAllocator(num_pages=4, page_size=PAGE_SIZE)
    prompts = ([1, 2, 0], [3, 4, 0], [5, 6, 0])
    for prompt in prompts:
        cache(alloc, prompt[:PAGE_SIZE])
    hit, _ = alloc.match_prefix([1, 2, 7])  # touching the oldest makes it the most recent
    alloc.free(hit)
    assert alloc.num_free_pages == 3
    alloc.allocate(1)
    assert [alloc.num_cached_tokens(p) for p in prompts] == [2, 0, 2]
    alloc.allocate(1)
    assert [alloc.num_cached_tokens(p) for p in prompts] == [2, 0, 0]


def test_uncached_free_pages_are_used_before_evicting() -> None:
    alloc = PageAllocator(num_pages=4, page_size=PAGE_SIZE)
    cache(alloc, [1, 2])
    alloc.free(alloc.allocate(2))
    alloc.allocate(2)
    assert alloc.num_cached_tokens([1, 2, 3]) == 2


def test_tail_page_of_a_finished_request_is_evicted_before_its_head() -> None:
    alloc = PageAllocator(num_pages=3, page_size=PAGE_SIZE)
    head, tail = cache(alloc, [1, 2, 3, 4])
    assert alloc.allocate(1) == [tail]
    assert alloc.match_prefix([1, 2, 3, 4, 5]) == ([head], 2)


@pytest.mark.parametrize(("prompt_len", "cached"), [(4, 0), (5, 4), (8, 4), (9, 8), (12, 8)])
def test_at_least_one_prompt_token_is_computed(prompt_len: int, cached: int) -> None:
    alloc = PageAllocator(num_pages=8, page_size=4)
    tokens = [7, 3, 9, 1, 4, 4, 2, 8, 5, 6, 1, 3]
    pages = alloc.allocate(3)
    alloc.register_full_pages(tokens, pages)
    assert alloc.num_cached_tokens(tokens[:prompt_len]) == cached
    assert alloc.match_prefix(tokens[:prompt_len]) == (pages[: cached // 4], cached)


def test_hits_need_the_same_salt_and_the_same_whole_prefix() -> None:
    alloc = PageAllocator(num_pages=8, page_size=PAGE_SIZE)
    cache(alloc, [1, 2, 3, 4], salt="lora-a")
    assert alloc.num_cached_tokens([1, 2, 3, 4, 5], salt="lora-a") == 4
    assert alloc.num_cached_tokens([1, 2, 3, 4, 5], salt="lora-b") == 0
    assert alloc.num_cached_tokens([1, 2, 3, 4, 5]) == 0
    assert alloc.num_cached_tokens([9, 2, 3, 4, 5], salt="lora-a") == 0  # same page 1, other page 0


def test_shared_page_returns_to_the_pool_only_at_refcount_zero() -> None:
    alloc = PageAllocator(num_pages=3, page_size=PAGE_SIZE)
    pages = alloc.allocate(2)
    alloc.fork(pages[:1])
    alloc.free(pages)
    assert (alloc.refcount(pages[0]), alloc.num_free_pages) == (1, 1)
    alloc.free(pages[:1])
    assert alloc.num_free_pages == 2


def test_misuse_raises_dedicated_errors_and_changes_nothing() -> None:
    alloc = PageAllocator(num_pages=3, page_size=PAGE_SIZE)
    (page,) = alloc.allocate(1)
    with pytest.raises(OutOfPagesError, match="requested 2 KV pages but only 1"):
        alloc.allocate(2)
    with pytest.raises(PageNotHeldError):
        alloc.free([page, page])
    assert alloc.refcount(page) == 1
    alloc.free([page])
    with pytest.raises(PageNotHeldError, match="double free"):
        alloc.free([page])
    with pytest.raises(PageNotHeldError):
        alloc.fork([page])
    with pytest.raises(PageNotHeldError):
        alloc.free([NULL_PAGE])
    assert alloc.num_free_pages == 2


def test_duplicate_prefix_stays_private_and_is_not_cached_twice() -> None:
    alloc = PageAllocator(num_pages=3, page_size=PAGE_SIZE)
    first, second = alloc.allocate(1), alloc.allocate(1)  # both computed before either registered
    alloc.register_full_pages([5, 6], first)
    alloc.register_full_pages([5, 6], second)
    assert alloc.match_prefix([5, 6, 7]) == (first, 2)
    alloc.free(first + first + second)
    assert alloc.reset_prefix_cache() == 1


def test_duplicate_takes_over_a_prefix_whose_cached_copy_was_evicted() -> None:
    alloc = PageAllocator(num_pages=3, page_size=PAGE_SIZE)
    cached = cache(alloc, [5, 6])
    duplicate = alloc.allocate(1)  # computed while the cached copy still existed
    alloc.register_full_pages([5, 6], duplicate)
    assert alloc.allocate(1) == cached  # evicts the cached copy
    alloc.free(duplicate)
    assert alloc.match_prefix([5, 6, 7]) == (duplicate, 2)


def test_registration_is_incremental_and_idempotent() -> None:
    tokens = [4, 1, 3, 3, 2, 9, 8]
    grown, at_once = PageAllocator(8, PAGE_SIZE), PageAllocator(8, PAGE_SIZE)
    pages = grown.allocate(4)
    for end in range(1, len(tokens) + 1):
        grown.register_full_pages(tokens[:end], pages)
    grown.register_full_pages(tokens, pages)
    at_once.register_full_pages(tokens, at_once.allocate(4))
    assert grown.num_cached_tokens(tokens) == at_once.num_cached_tokens(tokens) == 6
    hashes = page_hashes(tokens, PAGE_SIZE)
    assert page_hashes(tokens[2:], PAGE_SIZE, parent=hashes[0]) == hashes[1:]
    assert len(set(hashes)) == len(hashes) == 3


def test_disabled_prefix_caching_never_hits_but_counts_queries() -> None:
    alloc = PageAllocator(num_pages=4, page_size=PAGE_SIZE, enable_prefix_caching=False)
    cache(alloc, [1, 2, 3])
    assert alloc.match_prefix([1, 2, 3]) == ([], 0)
    assert (alloc.stats.queries, alloc.stats.hits) == (3, 0)


def test_stats_and_usage() -> None:
    alloc = PageAllocator(num_pages=5, page_size=PAGE_SIZE)
    cache(alloc, [1, 2, 3, 4])
    pages, _ = alloc.match_prefix([1, 2, 3, 4, 5, 6])
    assert (alloc.stats.queries, alloc.stats.hits) == (6, 4)
    assert alloc.usage == pytest.approx(2 / 4)
    alloc.free(pages)
    assert alloc.usage == 0.0
