"""The alignment loop: per-row state, and the order of the stages for every sentence.

For each row, one sentence at a time (see ``docs/design.md``)::

    upstream round (engine) -> boundary -> aligner call -> splice -> cache (engine) -> streamer

1. **boundary** (:func:`~.boundary.next_step`): is the row's answer over, does it hold a complete sentence, or
   must the upstream generate more?
2. **upstream round** (:meth:`~.engines.UpstreamEngine.run_round`): every row that needs a sentence generates
   until it has one; rows whose sentence is complete wait (drafting ahead, or held: ``completed_rows``);
3. **aligner call** (:mod:`.aligner_call`): one call for every row with a complete sentence;
4. **splice** (:mod:`.splice`): unchanged sentences keep their tokens and look-ahead; a changed one is replaced
   by the correction's tokens, and the engine forgets what it computed after the longest common prefix
   (**cache**, :meth:`~.engines.UpstreamEngine.replace_tail`);
5. **streamer** (:class:`~.streamers.StreamerDriver`): each accepted piece as it is accepted.

The loop owns the rows (:class:`RowState`); the engine owns the model and its cache. A sliding-window batch runs
the same loop one row at a time (each row with its own engine), so every path builds its output and errors in
one place: :meth:`AlignmentLoop.output` and :meth:`AlignmentLoop.fail`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..compat import generate_cache_key
from ..errors import AlignerOutputError, Cancelled, StreamAlignmentCancelled, StreamAlignmentError, UpstreamFailure
from ..outputs import AlignmentRecord, AlignmentStats, StreamAlignedGenerateOutput
from .aligner_call import AlignerCallFailure, build_request, call_aligner
from .boundary.tracker import Sentence, decode_span, next_step
from .engines.base import UpstreamEngine
from .plan import GenerationPlan
from .row_state import RowState
from .splice import check_correction, splice_correction

__all__ = ["AlignmentLoop"]


class AlignmentLoop:
    """Runs the stages for every row of ``plan`` until each row has finished (see the module docstring).

    Example (``plan`` comes from :func:`~.generation.stream_aligned_generate`'s preparation steps)::

        loop = AlignmentLoop(plan)
        cache = loop.run()
        output = loop.output(cache)
    """

    def __init__(self, plan: GenerationPlan) -> None:
        self.plan = plan
        width = plan.prompt_ids.shape[1]
        self.rows = [
            RowState(
                index=r,
                ids=list(ids),
                prompt_len=len(ids),
                question=plan.questions[r],
                max_new_tokens=plan.max_new_tokens,
                offset=width - len(ids),
            )
            for r, ids in enumerate(plan.rows)
        ]
        self.stats = AlignmentStats()

    # ------------------------------------------------------------------ running
    def run(self) -> Any:
        """Generate every row; returns what the engine leaves (the KV cache of a single engine, else ``None``)."""
        plan = self.plan
        try:
            try:
                plan.streamer.prompt(plan.prompt_ids)
                if plan.row_by_row:
                    for row in self.rows:
                        self._run_engine([row])
                    result = None
                else:
                    result = self._run_engine(self.rows)
            except Cancelled as err:  # the caller cancelled (a served client left): the output so far, as an error
                raise self.fail(str(err), StreamAlignmentCancelled, None, None) from err
            except UpstreamFailure as err:  # a served upstream failed: a clear error with every row's output so far
                raise self.fail(str(err), StreamAlignmentError, None, None) from err
        except BaseException as error:  # KeyboardInterrupt too: a streaming consumer must not wait forever
            plan.streamer.abort(error, [row.index for row in self.rows if not row.finished])
            raise
        plan.streamer.end()
        return result

    def _run_engine(self, rows: list[RowState]) -> Any:
        """Run ``rows`` on an engine of their own; the engine is closed whatever happens (returns what it keeps)."""
        engine = self.plan.engine_factory(rows, self.stats)
        try:
            self._run(engine, rows)
        except BaseException:
            engine.close()  # a failed call leaves no requests, threads or connections behind
            raise
        return engine.close()

    def _run(self, engine: UpstreamEngine, rows: list[RowState]) -> None:
        plan = self.plan
        settings = plan.settings
        while True:
            sentences: list[tuple[RowState, int]] = []
            to_generate: list[RowState] = []
            can_draft: list[RowState] = []  # rows with a complete sentence that may generate past it
            for row in rows:
                if row.finished:
                    continue
                step = next_step(
                    plan.tokenizer,
                    row.ids,
                    row.start,
                    eos_token_ids=plan.eos_token_ids,
                    stopped=row.budget_left <= 0 or row.stopped,
                    known_cut=row.known_cut,
                    terminators=settings.terminators,
                    max_sentence_tokens=settings.max_sentence_tokens,
                )
                if step.kind == "eos":
                    tail = row.ids[step.eos_at :]
                    self._emit(row, AlignmentRecord(step.eos_at, tail, list(tail), "", "", aligned=False))
                    self._finish(engine, row)
                elif step.kind == "finished":
                    self._finish(engine, row)
                elif step.kind == "generate":
                    to_generate.append(row)
                else:
                    sentences.append((row, step.cut))
                    if not step.final:
                        can_draft.append(row)
            if to_generate:
                # Rows with a complete sentence wait while the others finish theirs: held, or drafting their
                # next sentence (kept if the aligner leaves theirs unchanged).
                self._upstream_round(engine, to_generate, can_draft if plan.completed_rows == "draft" else [])
            elif sentences:
                self._align(engine, sentences)
            else:
                break

    def _upstream_round(self, engine: UpstreamEngine, rows: list[RowState], drafting: list[RowState]) -> None:
        outcomes = engine.run_round(rows, drafting)
        for row in rows:
            outcome = outcomes[row.index]
            row.ids.extend(outcome.tokens)
            row.known_cut = outcome.cut
            if outcome.stopped and row.budget_left > 0:
                row.stopped = True  # a stopping criterion of the user's ended the row: align what there is
        for row in drafting:
            row.ids.extend(outcomes[row.index].tokens)  # its pending sentence end stays as it is

    def _align(self, engine: UpstreamEngine, sentences: list[tuple[RowState, int]]) -> None:
        """One aligner call for every row with a complete sentence, then the splices."""
        plan = self.plan
        tokenizer = plan.tokenizer
        pending: list[tuple[RowState, Sentence]] = []
        requests = []
        for row, cut in sentences:
            sentence = Sentence.at(tokenizer, row.ids, row.start, cut)
            if not sentence.content.strip("\ufffd"):  # nothing to correct (or half a character at the end): passed on
                piece = row.ids[row.start : cut]
                self._emit(row, AlignmentRecord(row.start, piece, list(piece), sentence.text, sentence.text, aligned=False))
                row.advance(cut)
                continue
            requests.append(build_request(tokenizer, row.question, row.ids, row.prompt_len, sentence))
            pending.append((row, sentence))
        if not requests:
            return
        try:
            answers = call_aligner(plan.correct, requests, rows=[row.index for row, _ in pending])
        except AlignerCallFailure as failure:
            cls = AlignerOutputError if failure.output_error else StreamAlignmentError
            raise self.fail(str(failure), cls, failure.row, failure.sentence) from failure.__cause__
        self.stats.aligner_calls += 1
        failure: tuple[int, str, str] | None = None
        for (row, sentence), answer in zip(pending, answers, strict=True):
            self.stats.sentences_aligned += 1
            check = check_correction(
                tokenizer, answer, sentence, max_correction_tokens=plan.settings.max_correction_tokens, ids=row.ids
            )
            if check.problem is not None:
                if plan.invalid_correction == "raise":
                    failure = failure or (row.index, check.problem, sentence.content)
                    continue  # this row keeps its draft; the other rows' corrections still go in
                where = f"row {row.index}: " if plan.batch_size > 1 else ""
                warnings.warn(where + check.problem + "; keeping the original sentence", UserWarning, stacklevel=2)
            if check.note is not None:
                where = f"row {row.index}: " if plan.batch_size > 1 else ""
                warnings.warn(where + check.note, UserWarning, stacklevel=2)
            if check.ids is None:  # unchanged: keep the tokens, the look-ahead and the cache as they are
                original = row.ids[sentence.start : sentence.cut]
                self._emit(row, AlignmentRecord(sentence.start, original, list(original), sentence.text, sentence.text))
                row.advance(sentence.cut)
                continue
            self._splice(engine, row, sentence, check.ids)
        engine.commit()
        if failure is not None:
            index, problem, content = failure
            raise self.fail(problem, AlignerOutputError, index, content)

    def _splice(self, engine: UpstreamEngine, row: RowState, sentence: Sentence, corrected_ids: list[int]) -> None:
        """Put ``corrected_ids`` in place of ``sentence`` and its look-ahead; the engine keeps the common prefix."""
        self.stats.sentences_changed += 1
        original = row.ids[sentence.start : sentence.cut]
        result = splice_correction(
            row.ids, sentence, corrected_ids, max_length=row.prompt_len + row.max_new_tokens, tokenizer=self.plan.tokenizer
        )
        row.ids = result.ids
        engine.replace_tail(row, result.keep)
        shown = decode_span(self.plan.tokenizer, result.ids, sentence.start, len(result.ids))
        self._emit(row, AlignmentRecord(sentence.start, original, list(result.corrected_ids), sentence.text, shown))
        row.advance(len(result.ids))
        row.stopped = row.stopped or result.truncated  # the correction spent the budget (a partial character dropped)

    def _emit(self, row: RowState, record: AlignmentRecord) -> None:
        record.start += row.offset
        record.row = row.index
        row.records.append(record)
        self.plan.streamer.record(record)

    def _finish(self, engine: UpstreamEngine, row: RowState) -> None:
        row.finished = True
        engine.drop_rows([row])
        self.plan.streamer.row_end(row.index)

    # ------------------------------------------------------------------ output and errors
    def sequences(self) -> torch.LongTensor:
        """The prompt rows as given, each followed by its generated tokens, right-padded like ``generate``."""
        plan = self.plan
        generated = [row.ids[row.prompt_len :] for row in self.rows]
        longest = max(len(g) for g in generated)
        pad = plan.pad_token_id
        rows = [p + g + [pad] * (longest - len(g)) for p, g in zip(plan.prompt_ids.tolist(), generated, strict=True)]
        return torch.tensor(rows, dtype=torch.long, device=plan.prompt_ids.device)

    def partial_texts(self) -> list[str]:
        """Each row's generated tokens so far, decoded without special tokens."""
        return [self.plan.tokenizer.decode(row.ids[row.prompt_len :], skip_special_tokens=True) for row in self.rows]

    def fail(self, message: str, cls: type[StreamAlignmentError], row: int | None, sentence: str | None) -> StreamAlignmentError:
        """The error to raise, carrying every row's output so far (``row``: the failing row, if one)."""
        if self.plan.batch_size > 1 and row is not None:
            message = f"row {row}: {message}"
        return cls(
            message,
            sequences=self.sequences(),
            alignment_trace=[list(r.records) for r in self.rows],
            partial_texts=self.partial_texts(),
            sentence=sentence,
            row=row,
        )

    def output(self, cache: Any = None) -> torch.LongTensor | StreamAlignedGenerateOutput:
        """``sequences``, or with ``return_dict_in_generate`` the full output (the cache only for a single row)."""
        sequences = self.sequences()
        if not self.plan.return_dict:
            return sequences
        return StreamAlignedGenerateOutput(
            sequences=sequences,
            **{generate_cache_key(): cache if self.plan.batch_size == 1 else None},
            alignment_trace=[r.records for r in self.rows],
            alignment_stats=self.stats,
        )
