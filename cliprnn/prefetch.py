"""Load dataset items on a small thread pool ahead of the consumer, in order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(
    items: Iterable[T],
    load_fn: Callable[[T], R],
    workers: int = 2,
    ahead: int = 4,
) -> Iterator[tuple[T, R | BaseException]]:
    """Yield ``(item, load_fn(item))`` in the order of ``items``, loading up to ``ahead`` early.

    Loading runs on ``workers`` threads while the consumer works on earlier items (decoding
    and resizing release the GIL, so they overlap with inference). An item whose load raises
    an ``Exception`` is yielded with that exception instead of a value, so one bad file does
    not stop the run. ``items`` is consumed lazily; closing the generator early cancels the
    loads not yet started. ``workers=0`` loads in the calling thread (no pool).
    """
    if workers < 0 or ahead < 0:
        raise ValueError(f"workers and ahead must be >= 0, got {workers} and {ahead}")
    if workers == 0:
        for item in items:
            yield item, _call(load_fn, item)
        return
    source = iter(items)
    pending: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cliprnn-prefetch") as pool:
        try:
            while True:
                while len(pending) <= ahead:
                    try:
                        item = next(source)
                    except StopIteration:
                        break
                    pending.append((item, pool.submit(load_fn, item)))
                if not pending:
                    return
                item, future = pending.popleft()
                try:
                    value: R | BaseException = future.result()
                except Exception as exc:  # handed to the consumer with its item
                    value = exc
                yield item, value
        finally:
            for _, future in pending:
                future.cancel()


def _call(load_fn: Callable[[T], R], item: T) -> R | BaseException:
    try:
        return load_fn(item)
    except Exception as exc:
        return exc
