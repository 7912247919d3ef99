"""Pipelining inside one worker: image i's dense CRF runs while image i+1 goes through CLIP.

``segment_stream`` runs :meth:`CaR.prepare` (every model pass) in the calling thread and
:meth:`CaR.finish` (dense CRF, SAM, label map, and an optional ``post`` step such as building
the labels to write) on ``crf_workers`` threads, and yields the results in input order. The
outputs are those of ``CaR.segment`` called on each image in turn: the same functions run on the
same inputs, only at other times.

pydensecrf holds the GIL for the whole mean-field inference (0.6 s per VOC image on one idle
core), so a CRF on a thread would stall the thread that drives the models. The CRF itself is
therefore sent to ``crf_workers`` worker processes (:class:`CrfProcessPool`: the image and the
probabilities go there, the marginals come back); the threads only wait for it, without the
GIL. Should a worker fail, the CRF falls back to running in the thread (still correct, only
not overlapped).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, BinaryIO, Protocol, TypeAlias, TypeVar, cast

import numpy as np

from cliprnn.config import CaRConfig
from cliprnn.postprocess import CRF_FIELDS, CrfFunction, dense_crf
from cliprnn.result import CaRResult

log = logging.getLogger(__name__)

K = TypeVar("K")
P = TypeVar("P")

#: One query list (text queries or ``Exemplars``) for every image, or a function of an item's
#: key giving that image's list.
QueriesFor: TypeAlias = Sequence[Any] | Callable[[Any], Sequence[Any]]


class Segmenter(Protocol[P]):
    """What :func:`segment_stream` drives: :class:`cliprnn.CaR` (``P`` is its ``PreparedImage``).

    ``segment(...)`` must equal ``finish(prepare(...))``; ``finish`` must be safe to call from
    another thread while ``prepare`` runs.
    """

    config: CaRConfig

    def segment(
        self,
        image: Any,
        queries: Sequence[Any],
        *,
        stuff: Sequence[str] | None = ...,
        trace: bool = ...,
    ) -> CaRResult: ...

    def prepare(
        self,
        image: Any,
        queries: Sequence[Any],
        *,
        stuff: Sequence[str] | None = ...,
        trace: bool = ...,
    ) -> P: ...

    def finish(self, prepared: P, *, crf_fn: CrfFunction | None = ...) -> CaRResult: ...


def segment_stream(
    car: Segmenter[Any],
    items: Iterable[tuple[K, Any]],
    queries_for: QueriesFor,
    crf_workers: int | None = None,
    *,
    stuff: Sequence[str] | None = None,
    trace: bool = False,
    post: Callable[[K, Any], Any] | None = None,
    crf_processes: bool = True,
) -> Generator[tuple[K, Any], None, None]:
    """Segment a stream of images, overlapping each image's CRF with the next one's models.

    ``items`` yields ``(key, image)`` pairs, where an image is anything ``CaR.segment`` takes or
    an exception (as :func:`cliprnn.prefetch.prefetch` yields for a file it could not read).
    ``queries_for`` is one query list for every image, or a function of the key giving each
    image's list. Yields ``(key, value)`` in the order of ``items``: ``value`` is the
    ``CaRResult`` (or ``post(key, result)``, computed on the worker thread), or the exception
    raised for that item (the item's own, or one from ``prepare``, ``finish`` or ``post``); an
    exception never stops the other items. ``KeyboardInterrupt`` and other non-``Exception``
    errors propagate.

    ``crf_workers`` (default ``car.config.crf_workers``) threads run ``finish`` and as many
    processes the CRF (``crf_processes=False`` keeps the CRF on the threads); 0 runs every
    image to completion in the calling thread, as ``CaR.segment`` does. At most
    ``crf_workers + 1`` images are in flight. Closing the generator early cancels what has not
    started and waits for what has.
    """
    workers = car.config.crf_workers if crf_workers is None else crf_workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"crf_workers must be an integer >= 0, got {workers!r}")
    queries_of = _queries_function(queries_for)
    if workers == 0:
        for key, image in items:
            if isinstance(image, BaseException):
                yield key, image
                continue
            try:
                result = car.segment(image, queries_of(key), stuff=stuff, trace=trace)
                value = post(key, result) if post is not None else result
            except Exception as exc:  # handed back with its key
                value = exc
            yield key, value
        return

    crf = CrfProcessPool(workers) if crf_processes and car.config.crf else None
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cliprnn-crf")
    pending: deque[tuple[K, Future[Any] | BaseException]] = deque()
    try:
        for key, image in items:
            if isinstance(image, BaseException):
                pending.append((key, image))
            else:
                try:
                    prepared = car.prepare(image, queries_of(key), stuff=stuff, trace=trace)
                except Exception as exc:
                    pending.append((key, exc))
                else:
                    job = pool.submit(_finish, car, key, prepared, crf, post)
                    pending.append((key, job))
                    del prepared  # the job holds it; nothing else should
            # hand back what is done, in order; wait when too many images are in flight
            while pending and (_done(pending[0][1]) or len(pending) > workers + 1):
                yield _pop(pending)
        while pending:
            yield _pop(pending)
    finally:
        for _, waiting in pending:
            if isinstance(waiting, Future):
                waiting.cancel()
        pool.shutdown(wait=True)
        if crf is not None:
            crf.close()


def _queries_function(queries_for: QueriesFor) -> Callable[[Any], Sequence[Any]]:
    if callable(queries_for):
        return queries_for
    if isinstance(queries_for, str):
        raise TypeError("queries_for must be a list of queries or a function, not one string")
    fixed = list(queries_for)
    return lambda _key: fixed


def _finish(
    car: Segmenter[P],
    key: K,
    prepared: P,
    crf: CrfFunction | None,
    post: Callable[[K, CaRResult], Any] | None,
) -> Any:
    result = car.finish(prepared, crf_fn=crf)
    return post(key, result) if post is not None else result


def _done(job: Future[Any] | BaseException) -> bool:
    return not isinstance(job, Future) or job.done()


def _pop(pending: deque[tuple[Any, Future[Any] | BaseException]]) -> tuple[Any, Any]:
    key, job = pending.popleft()
    if not isinstance(job, Future):
        return key, job
    try:
        return key, job.result()
    except Exception as exc:
        return key, exc


# ---------------------------------------------------------------------- CRF in processes
def crf_job(image_u8: np.ndarray, probs: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """``dense_crf`` with the CRF settings as a plain dict (what a worker process receives)."""
    settings: Any = SimpleNamespace(**params)  # dense_crf reads only the CRF_FIELDS
    return dense_crf(image_u8, probs, settings)


class CrfProcessPool:
    """A drop-in for ``dense_crf`` that runs it in one of ``processes`` worker processes.

    The workers are plain ``python -c`` processes (``cliprnn.crf_worker``) fed through pipes,
    not ``multiprocessing`` children: they never re-import the caller's main script (which a
    spawned child does, re-running an unguarded script), and they inherit no torch thread
    pools or CUDA state (which a forked child would). They import numpy and pydensecrf only.
    A call blocks its thread without holding the GIL. If a worker cannot be started or dies,
    that call and every later one run the CRF in the calling thread, with one warning.
    """

    def __init__(self, processes: int) -> None:
        self._idle: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
        self._workers: list[subprocess.Popen[bytes]] = []
        self._local = False
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        env.setdefault("OMP_NUM_THREADS", "1")
        command = [sys.executable, "-c", "from cliprnn.crf_worker import main; main()"]
        try:
            for _ in range(processes):  # started now: they import while image 1 is prepared
                worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          env=env)  # fmt: skip
                self._workers.append(worker)
                self._idle.put(worker)
        except OSError as exc:
            self._fall_back(exc)

    def __call__(self, image_u8: np.ndarray, probs: np.ndarray, config: Any) -> np.ndarray:
        if not self._local:
            from cliprnn.crf_worker import read_message, write_message

            params = {name: getattr(config, name) for name in CRF_FIELDS}
            worker = self._idle.get()
            try:
                assert worker.stdin is not None and worker.stdout is not None
                write_message(cast(BinaryIO, worker.stdin), (image_u8, probs, params))
                status, value = read_message(cast(BinaryIO, worker.stdout))
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                worker.kill()
                self._fall_back(exc)
            else:
                self._idle.put(worker)
                if status != "ok":
                    raise RuntimeError(f"dense CRF failed in a worker process: {value}")
                return value
        return dense_crf(image_u8, probs, config)

    def _fall_back(self, exc: BaseException) -> None:
        if not self._local:
            log.warning("CRF worker process unavailable (%s); running the CRF in-thread", exc)
        self._local = True
        for worker in self._workers:  # unblock calls waiting for a worker
            self._idle.put(worker)

    def close(self) -> None:
        """End the workers (they finish the job in hand first)."""
        for worker in self._workers:
            with contextlib.suppress(OSError):
                if worker.stdin is not None:
                    worker.stdin.close()
        for worker in self._workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
