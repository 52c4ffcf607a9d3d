"""Host-side owner of the paged KV cache: reference-counted pages plus an LRU prefix cache.

The device holds `num_pages` pages of `page_size` token slots each; this module only decides which
request may write which page. Page 0 is the null page that padded writes land in, so it is never
handed out. A page whose tokens are all computed is registered under a hash of its whole prefix, so
a later request with the same prefix (and salt) reuses the page instead of recomputing it.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NULL_PAGE = 0

PrefixSalt = str | bytes | int | None


class PageAllocatorError(Exception):
    """Base class for misuse of the page allocator."""


class OutOfPagesError(PageAllocatorError):
    """Not enough free pages: the scheduler answers this by preempting, not by crashing."""

    def __init__(self, requested: int, available: int) -> None:
        self.requested = requested
        self.available = available
        super().__init__(f"requested {requested} KV pages but only {available} are free")


class PageNotHeldError(PageAllocatorError):
    """A page was freed, forked or registered while nobody holds it (a double free, usually)."""

    def __init__(self, page: int, action: str) -> None:
        self.page = page
        super().__init__(f"cannot {action} KV page {page}: nobody holds it (double free?)")


def page_hashes(
    token_ids: Sequence[int], page_size: int, salt: PrefixSalt = None, parent: bytes | None = None
) -> list[bytes]:
    """Chained SHA-256 of every full page: page i's hash covers tokens of pages 0..i and the salt.

    A cryptographic hash, because a collision would silently hand one request another's KV.
    `parent` continues an existing chain (the hash of the page just before `token_ids`).
    """
    if parent is None:
        parent = hashlib.sha256(b"tpuserve-prefix" + repr(salt).encode()).digest()
    hashes = []
    for start in range(0, len(token_ids) - page_size + 1, page_size):
        tokens = np.asarray(token_ids[start : start + page_size], dtype=np.int64)
        parent = hashlib.sha256(parent + tokens.tobytes()).digest()
        hashes.append(parent)
    return hashes


@dataclass
class PrefixCacheStats:
    """Token counts for the prefix-cache hit-rate metric (hits / queries)."""

    queries: int = 0
    hits: int = 0


class PageAllocator:
    """Reference-counted pages; freed pages that hold a registered prefix stay reusable until evicted.

    Every page other than the null page is in exactly one state: held (refcount > 0), free
    (refcount 0, no cached content) or evictable (refcount 0, registered prefix, in LRU order).
    """

    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True) -> None:
        if num_pages < 2 or page_size < 1:
            raise ValueError(f"need num_pages >= 2 and page_size >= 1, got {num_pages} and {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.stats = PrefixCacheStats()
        self._refcount = [0] * num_pages
        # Popped from the end, so low page ids go out first: easier to read in a debugger.
        self._free: list[int] = list(range(num_pages - 1, NULL_PAGE, -1))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._page_hash: dict[int, bytes] = {}  # every hashed held or evictable page
        self._cached: dict[bytes, int] = {}  # hash -> the one page a prefix hit returns

    @property
    def num_free_pages(self) -> int:
        """Pages an `allocate` call can get: free ones plus cached ones it may evict."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of allocatable pages that requests hold (the KV-cache usage metric)."""
        return 1.0 - self.num_free_pages / (self.num_pages - 1)

    def refcount(self, page: int) -> int:
        """How many holders share `page`."""
        return self._refcount[page]

    def allocate(self, n: int) -> list[int]:
        """Take `n` pages with refcount 1, evicting least-recently-used cached prefixes if needed."""
        if n > self.num_free_pages:
            raise OutOfPagesError(n, self.num_free_pages)
        pages = []
        for _ in range(n):
            if self._free:
                page = self._free.pop()
            else:
                page, _ = self._evictable.popitem(last=False)
                self._forget_hash(page)
            self._refcount[page] = 1
            pages.append(page)
        return pages

    def fork(self, pages: Sequence[int]) -> None:
        """Take one more reference on held pages, so another sequence (n > 1 sampling) shares them."""
        for page in pages:
            self._check_held(page, "fork", need=1)
        for page in pages:
            self._refcount[page] += 1

    def free(self, pages: Sequence[int]) -> None:
        """Drop one reference per listed page; a page at refcount 0 becomes free or evictable.

        Pages are released last to first so that, among one request's pages, the tail of the
        prefix is evicted first: a cached head page stays useful on its own, a tail page does not.
        """
        for page, count in Counter(pages).items():
            self._check_held(page, "free", need=count)
        for page in reversed(pages):
            self._refcount[page] -= 1
            if self._refcount[page] > 0:
                continue
            if self._claim_cache_entry(page):
                self._evictable[page] = None
            else:
                self._page_hash.pop(page, None)
                self._free.append(page)

    def match_prefix(self, token_ids: Sequence[int], salt: PrefixSalt = None) -> tuple[list[int], int]:
        """Take references on the longest run of cached pages that prefix `token_ids`.

        Returns the pages and how many tokens they cover; counted in the hit-rate stats.
        """
        pages = self._lookup(token_ids, salt)
        for page in pages:
            if self._refcount[page] == 0:
                del self._evictable[page]
            self._refcount[page] += 1
        num_cached = len(pages) * self.page_size
        self.stats.queries += len(token_ids)
        self.stats.hits += num_cached
        return pages, num_cached

    def num_cached_tokens(self, token_ids: Sequence[int], salt: PrefixSalt = None) -> int:
        """What `match_prefix` would report, without taking references or counting stats."""
        return len(self._lookup(token_ids, salt)) * self.page_size

    def register_full_pages(
        self, token_ids: Sequence[int], pages: Sequence[int], salt: PrefixSalt = None
    ) -> None:
        """Make the full pages of a request findable by prefix; call again whenever a page fills up.

        `token_ids` are the tokens whose KV is written into `pages` (page i holds tokens
        i*page_size...). Pages hashed before are skipped, and the chain resumes from the last of
        them, so repeated calls cost only the new pages. If another page already caches the same
        prefix, the new page stays private and is simply freed later.
        """
        if not self.enable_prefix_caching:
            return
        num_full = min(len(token_ids) // self.page_size, len(pages))
        done = 0
        while done < num_full and pages[done] in self._page_hash:
            done += 1
        parent = self._page_hash[pages[done - 1]] if done else None
        new_pages = pages[done:num_full]
        for page in new_pages:
            self._check_held(page, "register", need=1)
        new_tokens = token_ids[done * self.page_size : num_full * self.page_size]
        hashes = page_hashes(new_tokens, self.page_size, salt, parent)
        for page, page_hash in zip(new_pages, hashes, strict=True):
            self._page_hash[page] = page_hash
            self._cached.setdefault(page_hash, page)

    def reset_prefix_cache(self) -> int:
        """Drop every evictable cached prefix (e.g. after new weights); returns how many pages it freed."""
        evicted = list(self._evictable)
        self._evictable.clear()
        for page in evicted:
            self._forget_hash(page)
            self._free.append(page)
        return len(evicted)

    def _lookup(self, token_ids: Sequence[int], salt: PrefixSalt) -> list[int]:
        """Cached pages for the longest prefix, leaving at least one prompt token to compute.

        The model must run on at least one token to produce logits for the next one, so a prompt
        that is entirely cached still recomputes its last page.
        """
        if not self.enable_prefix_caching or not token_ids:
            return []
        max_pages = (len(token_ids) - 1) // self.page_size
        pages = []
        for page_hash in page_hashes(token_ids[: max_pages * self.page_size], self.page_size, salt):
            page = self._cached.get(page_hash)
            if page is None:
                break
            pages.append(page)
        return pages

    def _claim_cache_entry(self, page: int) -> bool:
        """Whether prefix hits may return this page once it is freed.

        A private duplicate takes over its prefix if the cached copy has been evicted meanwhile.
        """
        page_hash = self._page_hash.get(page)
        return page_hash is not None and self._cached.setdefault(page_hash, page) == page

    def _forget_hash(self, page: int) -> None:
        page_hash = self._page_hash.pop(page)
        if self._cached.get(page_hash) == page:
            del self._cached[page_hash]

    def _check_held(self, page: int, action: str, need: int) -> None:
        if not NULL_PAGE < page < self.num_pages or self._refcount[page] < need:
            raise PageNotHeldError(page, action)
