"""
Walking a whole store a page at a time, without the garbage collector's help.

A load of every connection (``ConnectionManager.load()``) and a keep-alive
or settling scan (summaries) both read the store in keyset pages on
``(created_at, id)``, so that the memory they need beyond what they keep is
one page, whatever the store's size, and a page costs the same wherever it
starts. They share this walk.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Protocol, TypeVar

from ._records import ConnectionRecord, ConnectionSummary
from ._states import ConnectionState

__all__ = ["each_page"]

#: What a page holds: records (``load()``) or summaries (keep-alive).
_P = TypeVar("_P", ConnectionRecord, ConnectionSummary)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """
    Pause Python's cyclic garbage collector for one page.

    A load creates objects that all survive (a record, its tokens, two
    secrets and a holder per connection). Collecting every 700 of them, and
    fully each time the heap grew by a quarter, re-examined the whole growing
    heap over and over: 0.55 s of a 3.2 s load of 100,000 connections. Paused
    per page (about 30 ms for 1,000), the young objects are examined once,
    when the page is done. Nothing is lost: cycles made meanwhile, by any
    coroutine, are collected after. Left alone if the application turned
    the collector off itself.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class ListPage(Protocol[_P]):
    """``Store.list_connections`` or ``Store.list_summaries``, as paging calls them."""

    def __call__(
        self,
        *,
        states: Collection[ConnectionState] | None,
        after: tuple[float, str] | None,
        limit: int,
    ) -> Awaitable[list[_P]]: ...


async def each_page(
    list_page: ListPage[_P],
    states: Collection[ConnectionState] | None,
    page_size: int,
    handle: Callable[[list[_P]], None],
) -> None:
    """
    Call *handle* with every stored connection of *states* that *list_page*
    returns, a page at a time, the cyclic collector paused while each page
    is read and handled.
    """
    if states is not None:
        states = frozenset(states)
    after: tuple[float, str] | None = None
    while True:
        with _collector_paused():
            page = await list_page(states=states, after=after, limit=page_size)
            handle(page)
        if len(page) < page_size:
            return
        last = page[-1]
        after = (last.created_at, last.id)
