"""Iterating in a worker thread, a bounded number of items ahead of the caller (Pendo pages
requested while the caller builds the one before; landing decoding while DuckDB writes)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, Generic, Self, TypeVar, cast

from ..errors import ConfigError

__all__ = ["prefetch"]

_T = TypeVar("_T")

_END: Final = object()


def prefetch(items: Iterator[_T], *, ahead: int = 1, name: str = "prefetch") -> _Prefetched[_T]:
    """Iterate ``items`` in a worker thread, at most ``ahead`` items ahead of the caller.

    The first items are requested at once. An exception raised by ``items`` is raised by the
    ``next()`` that would have returned its item, after the items before it. ``close()`` (or
    leaving a ``with`` block) cancels what was not started, closes ``items`` in the worker (an
    HTTP response it holds is released) and waits for the worker to end.

    Args:
        items: The source; it is only ever advanced by the one worker thread.
        ahead: How many items may wait for the caller (or be in the making).
        name: Prefix of the worker thread's name.

    Returns:
        An iterator over the same items, in order.
    """
    if ahead < 1:
        raise ConfigError(f"prefetch ahead must be 1 or more, got {ahead}")
    return _Prefetched(items, ahead, name)


class _Prefetched(Generic[_T]):
    def __init__(self, items: Iterator[_T], ahead: int, name: str) -> None:
        self._items = items
        self._worker: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: deque[Future[object]] = deque()
        for _ in range(ahead):
            self._pending.append(self._worker.submit(next, items, _END))

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> _T:
        if self._worker is None:
            raise StopIteration
        try:
            item = self._pending.popleft().result()
        except BaseException:
            self.close()
            raise
        if item is _END:
            self.close()
            raise StopIteration
        self._pending.append(self._worker.submit(next, self._items, _END))
        return cast(_T, item)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop fetching, close the source and wait for the worker thread to end."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        close = getattr(self._items, "close", None)
        if close is not None:
            worker.submit(close)  # after the item in the making: a generator runs in one thread
        worker.shutdown(wait=True)
