"""Batching aligner calls across concurrent sentence loops: a short collection window, one ``correct()`` call.

Each stream-aligned request runs its own sentence loop (a served model has many at once). Their aligner calls
arrive at different moments; :class:`BatchingAligner` holds the first one for ``window`` seconds (or until
``max_batch`` requests are waiting), then makes one call of the wrapped aligner with every waiting request and
hands each caller its answers. While that call runs, new requests queue up and go together in the next one, so
under load the batch grows by itself. An aligner served by vLLM (:class:`~.vllm.VLLMAligner`) batches by itself,
continuously: give it ``max_in_flight`` > 1 so a batch that arrives while another is decoding is sent at once
instead of waiting for it (docs/benchmarks.md measures both). Works for any aligner the loop accepts (a :class:`~.aligner.StreamAligner`,
a :class:`~.vllm_aligner.VLLMAligner`, an object with ``correct``, a function).

Example:

    >>> from transformers_stream_aligner import AlignmentRequest
    >>> batching = BatchingAligner(lambda question, prefix, last: last.upper(), window=0.001)
    >>> batching.correct([AlignmentRequest("q", "", "hi."), AlignmentRequest("q", "", "yo.")])
    ['HI.', 'YO.']
    >>> batching.stats.calls, batching.stats.requests
    (1, 2)
    >>> batching.close()
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .model import AlignmentRequest, as_correction_fn

__all__ = ["BatchingAligner", "BatchingStats"]


@dataclass
class BatchingStats:
    """Counters of a :class:`BatchingAligner`: ``calls`` of the wrapped aligner, ``requests`` sent in them,
    ``largest_batch`` (requests in one call), ``callers`` (``correct`` calls it served)."""

    calls: int = 0
    requests: int = 0
    largest_batch: int = 0
    callers: int = 0


class BatchingAligner:
    """An aligner that batches the ``correct`` calls of concurrent loops into one call of ``aligner`` (see the
    module docstring). Safe to share between threads: that is its purpose.

    Args:
        aligner: what to call (anything ``generate(aligner=...)`` accepts).
        window: seconds to wait for more requests after the first one arrives (default 5 ms).
        max_batch: call at once when this many requests wait.
        max_in_flight: calls of ``aligner`` that may run at the same time (default 1: one after the other, which an
            in-process model wants; a vLLM server batches concurrent calls itself). ``aligner`` must then be safe to
            call from several threads.

    If the wrapped call raises, every caller of that batch gets the exception (each loop then fails with its
    partial output). :meth:`close` stops the worker thread; a closed aligner refuses new calls.
    """

    def __init__(self, aligner: Any, *, window: float = 0.005, max_batch: int = 64, max_in_flight: int = 1) -> None:
        if window < 0:
            raise ValueError(f"window must be >= 0 seconds, got {window}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
        self.aligner = aligner
        self._correct = as_correction_fn(aligner)
        self.window = window
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.stats = BatchingStats()
        self._slots = threading.BoundedSemaphore(max_in_flight)  # calls running now
        self._calls = ThreadPoolExecutor(max_in_flight, thread_name_prefix="aligner-call") if max_in_flight > 1 else None
        self._queue: queue.Queue[tuple[list[AlignmentRequest], Future] | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def correct(self, requests: list[AlignmentRequest]) -> list[Any]:
        """Answers for ``requests``, from one call of the wrapped aligner shared with whoever else is waiting.
        Does not mutate ``requests``."""
        requests = list(requests)
        if not requests:
            return []
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("this BatchingAligner is closed")
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="aligner-batching", daemon=True)
                self._worker.start()
            self.stats.callers += 1
            self._queue.put((requests, future))
        return future.result()

    def close(self) -> None:
        """Stop the worker once the calls already queued are answered."""
        with self._lock:
            self._closed = True
            worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(None)
            worker.join()
        if self._calls is not None:
            self._calls.shutdown(wait=True)  # the calls already running end first

    def __enter__(self) -> BatchingAligner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"BatchingAligner({self.aligner!r}, window={self.window}, max_batch={self.max_batch}, "
                f"max_in_flight={self.max_in_flight})")  # fmt: skip

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            size = len(first[0])
            deadline = time.monotonic() + self.window
            stop = False
            while size < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                size += len(item[0])
            self._dispatch(batch)
            if stop:
                return

    def _dispatch(self, batch: list[tuple[list[AlignmentRequest], Future]]) -> None:
        """Run ``batch`` here (one call at a time) or, with ``max_in_flight`` > 1, on a thread of its own once a slot
        is free (the next batch is collected meanwhile)."""
        if self._calls is None:
            self._run(batch)
            return
        self._slots.acquire()  # waiting here lets the next batch grow meanwhile
        self._calls.submit(self._run, batch).add_done_callback(lambda _: self._slots.release())

    def _run(self, batch: list[tuple[list[AlignmentRequest], Future]]) -> None:
        requests = [request for part, _ in batch for request in part]
        try:
            answers = self._correct(list(requests))
            if not isinstance(answers, (list, tuple)) or len(answers) != len(requests):
                raise ValueError(
                    f"the aligner must return one correction per request ({len(requests)}); got {answers!r}"
                )
        except BaseException as err:  # noqa: BLE001 - every caller of the batch gets it
            for _, future in batch:
                future.set_exception(err)
            return
        with self._lock:
            self.stats.calls += 1
            self.stats.requests += len(requests)
            self.stats.largest_batch = max(self.stats.largest_batch, len(requests))
        begin = 0
        for part, future in batch:
            future.set_result(list(answers[begin : begin + len(part)]))
            begin += len(part)
