"""The engine seam: what the alignment loop needs from whatever runs the upstream model.

The loop (:mod:`..loop`) owns each row's tokens and decides what happens next; an engine owns the upstream
model and its state (a KV cache, a server's prefix cache, ...) and does three things for it:

1. :meth:`UpstreamEngine.run_round` - extend rows until each has completed its current sentence (plus the
   look-ahead that decides it), reached its end, spent its token budget or been stopped;
2. :meth:`UpstreamEngine.replace_tail` - a splice changed a row's tokens from some index on: forget the state
   computed for the old ones;
3. :meth:`UpstreamEngine.drop_rows` - finished rows leave the batch.

Plus two bookkeeping calls: :meth:`UpstreamEngine.commit` after the splices of an aligner call (everything
before each row's sentence start is accepted for good) and :meth:`UpstreamEngine.close` at the end.

``transformers``' ``generate`` on a KV cache is the first implementation
(:class:`~.transformers_engine.TransformersEngine`). An engine must be exact: the tokens it generates for a
row are the ones its model generates from the row's tokens as they are now (prompt, accepted sentences and
any corrected text), whatever happened to the row before.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import Cancelled, UpstreamFailure
from ..row_state import RowState

__all__ = ["Cancelled", "RoundOutcome", "UpstreamEngine", "UpstreamFailure", "run_cancellable"]


@dataclass
class RoundOutcome:
    """What one round did to one row.

    Attributes:
        tokens: the tokens generated for the row this round (to be appended to its ids; an EOS included).
        cut: where the row's current sentence ends, as an index into its ids after appending ``tokens``
            (``None``: no sentence end was found, e.g. the row ended or was stopped first). Always ``None``
            for a drafting row.
        stopped: the row was stopped before its sentence ended by something other than its end or its
            token budget (a stopping criterion, a stop string, ``max_time``).
    """

    tokens: list[int] = field(default_factory=list)
    cut: int | None = None
    stopped: bool = False


class UpstreamEngine(ABC):
    """Runs the upstream model for the alignment loop (see the module docstring).

    An engine is built for a fixed set of :class:`~..row_state.RowState` objects (one generate call, or one row of
    it) and reads their ``ids``, ``start`` and ``budget_left``; it never changes them: the loop applies what
    :meth:`run_round` returns.
    """

    @abstractmethod
    def run_round(self, rows: Sequence[RowState], drafting: Sequence[RowState]) -> dict[int, RoundOutcome]:
        """Generate until every row in ``rows`` has completed its current sentence (``RoundOutcome.cut``), reached
        its end (EOS), spent ``row.budget_left`` tokens or been stopped.

        Rows in ``drafting`` already hold a complete sentence that waits for the aligner; an engine may let them
        generate ahead (a draft of what follows, kept by the loop if the aligner leaves the sentence unchanged) or
        leave them as they are. Returns one :class:`RoundOutcome` per row of ``rows`` and ``drafting``, by
        ``row.index``.
        """

    @abstractmethod
    def replace_tail(self, row: RowState, keep: int) -> None:
        """``row.ids[keep:]`` were replaced (a splice): drop any state computed from the old tokens after ``keep``."""

    @abstractmethod
    def drop_rows(self, rows: Iterable[RowState]) -> None:
        """``rows`` have finished: they take no part in later rounds."""

    def commit(self) -> None:  # noqa: B027 - optional hook
        """The loop applied an aligner call's splices; each row's tokens before ``row.start`` are final."""

    def close(self) -> Any:
        """The engine's rows are done, or the call failed: release what the engine holds (connections, threads);
        returns what the caller may keep (e.g. the KV cache), or ``None``. Called once per engine."""
        return None


async def run_cancellable(fn: Callable[[threading.Event], Any]) -> Any:
    """Run the blocking call ``fn(cancel)`` (a sentence loop) on a thread of its own and await its result.

    If the awaiting task is cancelled (a client disconnected), ``cancel`` is set, the call is awaited until it has
    ended its engine's requests, and the cancellation goes on. A thread per call (not the default executor, which
    has a few workers) so that many concurrent calls each run their own loop while the upstream batches them.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    cancel = threading.Event()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result = fn(cancel)
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, err)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="stream-aligned-call", daemon=True).start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        try:
            await future  # the loop ends its requests at their next token
        except BaseException:  # noqa: BLE001 - the call's own error (StreamAlignmentCancelled) is expected here
            pass
        raise
