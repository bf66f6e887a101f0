"""Stream-aligned ``generate``: the loop that ties the pieces together.

Data path, one sentence at a time per row (see ``docs/design.md``):

1. **upstream round** – the stock ``GenerationMixin.generate`` runs on the whole (padded) batch with our
   KV cache, stopped by :class:`SentenceBoundaryCriteria` once every row that needs one has a complete
   sentence (plus look-ahead);
2. **boundary** – :func:`find_token_boundary` gives the token index where the sentence ends;
3. **aligner** – each complete sentence (whitespace stripped) goes to the aligner with the question and
   the corrected answer so far, all rows in one call;
4. **splice** – unchanged: nothing to do, the look-ahead is kept. Changed: the correction (plus the
   original whitespace) is tokenized as plain text and replaces the sentence and its look-ahead;
5. **cache** – kept up to the longest common prefix of old and new ids (the rest is masked out, and cut
   off where no row needs it: :mod:`.batch_layout`); the next round feeds only the new tokens. Caches
   that cannot be cut are re-filled from scratch (one warning per call);
6. **streamer** – receives the prompt once, then each accepted (corrected) sentence, then ``end()``.

Exactness: with an aligner that returns every sentence unchanged the tokens equal plain ``generate``;
with a rewriting aligner each sentence is exactly what uncached decoding of the corrected text gives.
"""

from __future__ import annotations

import copy
import inspect
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import (
    DynamicCache,
    GenerationMixin,
    LogitsProcessorList,
    MaxTimeCriteria,
    StaticCache,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .aligner import AlignmentRequest, StreamAligner, as_correction_fn
from .batch_layout import BatchLayout
from .boundary import decode_span, find_token_boundary
from .cache import (
    cache_can_crop,
    has_sliding_layers,
    make_rollback_cache,
    prepare_user_cache,
    trim_cache,
)
from .logits_process import HoldCompletedRowsLogitsProcessor
from .prompt import question_from_prompt
from .sentence_splitter import DEFAULT_TERMINATORS, split_whitespace
from .splice import longest_common_prefix, special_token_ids, tokenize_plain_text
from .stopping_criteria import SentenceBoundaryCriteria

__all__ = [
    "AlignerOutputError",
    "AlignmentRecord",
    "AlignmentStats",
    "StreamAlignedGenerateOutput",
    "StreamAlignedGenerationMixin",
    "StreamAlignmentError",
    "enable_stream_alignment",
    "stream_aligned_generate",
]

_ALIGNER_KWARGS = (
    "aligner",
    "aligner_question",
    "max_sentence_tokens",
    "max_correction_tokens",
    "terminators",
    "invalid_correction",
    "completed_rows",
)
_UNSUPPORTED_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
DEFAULT_MAX_CORRECTION_TOKENS = 256
DEFAULT_MAX_SENTENCE_TOKENS = 256


@dataclass
class AlignmentRecord:
    """One aligned piece of a row's answer.

    Attributes:
        start: index in ``sequences[row]`` where the piece begins.
        original_ids: the tokens the upstream generated for it.
        corrected_ids: the tokens that stand at ``start`` in the output.
        original_text: the decoded original (surrounding whitespace included).
        corrected_text: the decoded correction (same whitespace re-attached).
        aligned: whether the aligner was asked (``False`` for pieces without text, e.g. a lone EOS).
        row: the row of ``sequences`` the piece belongs to.

    The records of a row tile its generated part in order; they are pass-through (``original_ids ==
    corrected_ids``) when the aligner left the sentence unchanged.
    """

    start: int
    original_ids: list[int]
    corrected_ids: list[int]
    original_text: str
    corrected_text: str
    aligned: bool = True
    row: int = 0

    @property
    def changed(self) -> bool:
        return self.original_ids != self.corrected_ids

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AlignmentStats:
    """Work counters of one stream-aligned ``generate`` call (for benchmarks and tuning).

    Attributes:
        rounds: upstream rounds (``generate`` calls on the KV cache).
        aligner_calls: calls of the aligner (one per round of sentences, whatever the batch size).
        sentences_aligned: sentences sent to the aligner; ``sentences_changed``: those it changed.
        upstream_columns: positions the upstream forwarded (one per token of a single sequence).
        upstream_slots: row-positions the upstream forwarded (batch rows × columns, summed over forwards;
            rows that have finished leave the batch).
        upstream_real_tokens: of those, real tokens of a row (the rest are held rows and masked holes).
        refed_tokens: tokens taken back out of the cache and forwarded again (one per row and round at
            most, when a row had nothing new to feed).
        cache_resets: times the cache was emptied and re-filled because it could not be cut back.
        peak_cache_columns: the most columns the KV cache held (the longest row plus masked holes).
    """

    rounds: int = 0
    aligner_calls: int = 0
    sentences_aligned: int = 0
    sentences_changed: int = 0
    upstream_columns: int = 0
    upstream_slots: int = 0
    upstream_real_tokens: int = 0
    refed_tokens: int = 0
    cache_resets: int = 0
    peak_cache_columns: int = 0

    @property
    def held_share(self) -> float:
        """Share of the upstream's forwarded row-positions spent on held rows and holes."""
        return 1.0 - self.upstream_real_tokens / self.upstream_slots if self.upstream_slots else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "held_share": self.held_share}


@dataclass
class StreamAlignedGenerateOutput(GenerateDecoderOnlyOutput):
    """``GenerateDecoderOnlyOutput`` plus ``alignment_trace`` (one list of :class:`AlignmentRecord`
    per row) and ``alignment_stats`` (:class:`AlignmentStats`)."""

    alignment_trace: list[list[AlignmentRecord]] | None = None
    alignment_stats: AlignmentStats | None = None


class StreamAlignmentError(RuntimeError):
    """Stream alignment stopped; nothing generated so far is lost.

    Attributes:
        sequences: every row's prompt plus its accepted sentences, plus the draft sentence being
            aligned, laid out like ``generate``'s output (``(batch, n)``, right-padded).
        alignment_trace: the records accepted so far (one list per row).
        partial_texts: per row, the generated part of ``sequences`` decoded without special tokens.
        row: the row whose sentence failed (``None`` when the aligner raised for a whole batch).
        partial_text: ``partial_texts[row]`` (row 0 when ``row`` is ``None``).
        sentence: the sentence being aligned when it failed.
    """

    def __init__(
        self,
        message: str,
        *,
        sequences: torch.Tensor,
        alignment_trace: list[list[AlignmentRecord]],
        partial_texts: list[str],
        sentence: str | None = None,
        row: int | None = None,
    ) -> None:
        super().__init__(message)
        self.sequences = sequences
        self.alignment_trace = alignment_trace
        self.partial_texts = partial_texts
        self.partial_text = partial_texts[row or 0] if partial_texts else ""
        self.sentence = sentence
        self.row = row


class AlignerOutputError(StreamAlignmentError, ValueError):
    """The aligner returned something unusable (not a string, empty, too long, control tokens)."""


@dataclass
class _Settings:
    terminators: str = DEFAULT_TERMINATORS
    max_sentence_tokens: int = DEFAULT_MAX_SENTENCE_TOKENS
    max_correction_tokens: int = DEFAULT_MAX_CORRECTION_TOKENS
    eos_ids: frozenset[int] = field(default_factory=frozenset)


class _DraftForwarder:
    """Inner-round streamer: forwards draft tokens to ``streamer.put_draft`` (skips the round's prompt)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.first = True

    def put(self, value: torch.Tensor) -> None:
        if self.first:
            self.first = False
            return
        self.target.put_draft(value)

    def end(self) -> None:
        pass


class _UserCriteria(StoppingCriteria):
    """Runs the user's stopping criteria and tells :class:`SentenceBoundaryCriteria` which rows they stopped."""

    def __init__(self, criteria: list[Any], boundary: SentenceBoundaryCriteria) -> None:
        self.criteria = StoppingCriteriaList(criteria)
        self.boundary = boundary

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop = self.criteria(input_ids, scores, **kwargs)
        if stop.dim() == 0:
            stop = stop.expand(input_ids.shape[0])
        for row in torch.nonzero(stop).flatten().tolist():
            self.boundary.stop_row(row)
        return stop


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _settings_from(aligner: Any, overrides: dict[str, Any]) -> _Settings:
    settings = _Settings()
    config = getattr(aligner, "config", None) if isinstance(aligner, StreamAligner) else None
    if config is not None:
        settings.terminators = config.terminators
        settings.max_sentence_tokens = config.max_sentence_tokens
        settings.max_correction_tokens = config.max_correction_tokens
    for key in ("terminators", "max_sentence_tokens", "max_correction_tokens"):
        if overrides.get(key) is not None:
            setattr(settings, key, overrides[key])
    if settings.max_sentence_tokens < 2:
        raise ValueError(f"max_sentence_tokens must be >= 2, got {settings.max_sentence_tokens}")
    if settings.max_correction_tokens < 1:
        raise ValueError(f"max_correction_tokens must be >= 1, got {settings.max_correction_tokens}")
    return settings


def _validate_generation(config: Any, model_kwargs: dict[str, Any]) -> None:
    if getattr(config, "num_beams", 1) and config.num_beams > 1:
        raise ValueError(
            f"stream alignment does not support beam search (num_beams={config.num_beams}): a correction "
            "replaces the text every beam was scored on. Use greedy decoding or sampling."
        )
    if model_kwargs.get("assistant_model") is not None or getattr(config, "prompt_lookup_num_tokens", None):
        raise ValueError(
            "stream alignment does not support assisted decoding (assistant_model / prompt_lookup_num_tokens) "
            "for the upstream model"
        )
    if model_kwargs.get("custom_generate") is not None:
        raise ValueError("stream alignment cannot be combined with custom_generate")
    for name in _UNSUPPORTED_OUTPUTS:
        if getattr(config, name, False):
            raise ValueError(
                f"{name}=True is not supported with an aligner: per-step outputs of replaced sentences would "
                "no longer match the returned sequences"
            )
    if (getattr(config, "min_new_tokens", None) or 0) > 0 or (getattr(config, "min_length", None) or 0) > 0:
        raise ValueError("min_new_tokens / min_length are not supported with an aligner")
    if (getattr(config, "num_return_sequences", 1) or 1) > 1 and not config.do_sample:
        raise ValueError(
            f"num_return_sequences={config.num_return_sequences} needs do_sample=True: greedy decoding would "
            "return identical sequences"
        )
    if "inputs_embeds" in model_kwargs:
        raise ValueError("stream alignment needs input_ids (inputs_embeds is not supported)")


def _budget(config: Any, prompt_width: int) -> int:
    if config.max_new_tokens is not None:
        return int(config.max_new_tokens)
    if config.max_length is not None:
        budget = int(config.max_length) - prompt_width
        if budget <= 0:
            raise ValueError(f"max_length={config.max_length} leaves no room after a prompt of {prompt_width} tokens")
        return budget
    return 20  # transformers' default max_length


def _prompt_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_id: int, eos_ids: list[int]) -> torch.Tensor:
    """The prompt's attention mask: given, or inferred from padding as ``generate`` does."""
    if attention_mask is None:
        if input_ids.shape[0] > 1 and pad_id not in eos_ids and bool((input_ids == pad_id).any()):
            return (input_ids != pad_id).long()
        return torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}; "
            "they must match"
        )
    if attention_mask.dim() != 2 or not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must be a 2D mask of 0s and 1s")
    return attention_mask.long()


def _questions(aligner_question: Any, tokenizer: Any, rows: list[list[int]], n_inputs: int, expand: int) -> list[str]:
    if aligner_question is None:
        return [question_from_prompt(tokenizer, ids) for ids in rows]
    if isinstance(aligner_question, str):
        return [aligner_question] * len(rows)
    questions = list(aligner_question)
    if len(questions) != n_inputs or not all(isinstance(q, str) for q in questions):
        raise ValueError(
            f"aligner_question must be a string or a list of {n_inputs} strings (one per prompt), got {aligner_question!r}"
        )
    return [q for q in questions for _ in range(expand)]


class _Run:
    """State of one stream-aligned ``generate`` call: per-row ids, sentence starts, records, the layout.

    Rows are kept as plain token lists without padding (``ids[r]``: prompt, then the answer so far).
    ``layout`` maps them onto the padded columns of the KV cache (:mod:`.batch_layout`).
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        correct: Any,
        settings: _Settings,
        config: Any,
        model_kwargs: dict[str, Any],
        prompt_rows: torch.Tensor,
        prompt_mask: torch.Tensor,
        rows: list[list[int]],
        questions: list[str],
        budget: int,
        cache: Any,
        streamer: Any,
        user_processors: list[Any],
        user_criteria: list[Any],
        invalid_correction: str,
        warned_fallback: bool,
        completed_rows: str = "draft",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.correct = correct
        self.settings = settings
        self.config = config
        self.model_kwargs = model_kwargs
        self.prompt_rows = prompt_rows
        self.width = prompt_rows.shape[1]
        self.batch = prompt_rows.shape[0]
        self.device = prompt_rows.device
        self.ids = rows  # each row's unpadded prompt; the answer is appended
        self.prompt_len = [len(row) for row in self.ids]
        self.questions = questions
        self.budget = budget
        self.cache = cache
        self.streamer = streamer
        self.per_row_streamer = bool(getattr(streamer, "per_row", False))
        self.invalid_correction = invalid_correction
        self.drafting = completed_rows == "draft"
        self.warned_fallback = warned_fallback
        self.special_ids = special_token_ids(tokenizer)
        self.start = list(self.prompt_len)
        self.records: list[list[AlignmentRecord]] = [[] for _ in range(self.batch)]
        self.finished = [False] * self.batch
        self.user_stopped = [False] * self.batch
        self.round_cut: list[int | None] = [None] * self.batch
        self.stats = AlignmentStats()

        # The cache's batch holds the unfinished rows only: slots[i] is the row in cache slot i.
        self.slots = list(range(self.batch))
        self.layout = BatchLayout(self.batch, config.pad_token_id, self.device, cache)
        if cache is not None and cache.get_seq_length() > 0:  # a user's cache pre-filled with the prompt
            self.layout.place_prefilled(prompt_rows, prompt_mask, cache.get_seq_length())
        self.criteria = SentenceBoundaryCriteria(
            tokenizer,
            self.start,
            terminators=settings.terminators,
            max_sentence_tokens=settings.max_sentence_tokens,
            eos_token_id=sorted(settings.eos_ids),
            hold_completed=not self.drafting,
        )
        self.processors = LogitsProcessorList([*user_processors, HoldCompletedRowsLogitsProcessor(self.criteria, config.pad_token_id)])
        self.stopping = StoppingCriteriaList([self.criteria])
        if user_criteria:
            self.stopping.append(_UserCriteria(user_criteria, self.criteria))
        self.draft = None
        if streamer is not None and not self.per_row_streamer and hasattr(streamer, "put_draft"):
            self.draft = _DraftForwarder(streamer)

    # ------------------------------------------------------------------ output and errors
    def offset(self, row: int) -> int:
        """Index in ``sequences[row]`` of ``ids[row]``'s generated tokens, minus their index in ``ids``."""
        return self.width - self.prompt_len[row]

    def sequences(self) -> torch.Tensor:
        """The prompt rows as given, each followed by its generated tokens, right-padded like ``generate``."""
        generated = [row[n:] for row, n in zip(self.ids, self.prompt_len, strict=True)]
        longest = max(len(g) for g in generated)
        pad = self.config.pad_token_id
        rows = [p + g + [pad] * (longest - len(g)) for p, g in zip(self.prompt_rows.tolist(), generated, strict=True)]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def partial_texts(self) -> list[str]:
        return [self.tokenizer.decode(row[n:], skip_special_tokens=True) for row, n in zip(self.ids, self.prompt_len, strict=True)]

    def fail(self, message: str, cls: type[StreamAlignmentError], row: int | None, sentence: str | None) -> StreamAlignmentError:
        if self.batch > 1 and row is not None:
            message = f"row {row}: {message}"
        return cls(
            message,
            sequences=self.sequences(),
            alignment_trace=[list(r) for r in self.records],
            partial_texts=self.partial_texts(),
            sentence=sentence,
            row=row,
        )

    def emit(self, row: int, record: AlignmentRecord) -> None:
        record.start += self.offset(row)
        record.row = row
        self.records[row].append(record)
        streamer = self.streamer
        if streamer is None:
            return
        if hasattr(streamer, "put_alignment"):
            streamer.put_alignment(record)
        if not self.per_row_streamer and record.corrected_ids:
            streamer.put(torch.tensor(record.corrected_ids, dtype=torch.long))

    def finish(self, row: int) -> None:
        self.finished[row] = True
        if self.per_row_streamer and hasattr(self.streamer, "end_row"):
            self.streamer.end_row(row)

    def budget_left(self, row: int) -> int:
        return self.budget - (len(self.ids[row]) - self.prompt_len[row])

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        if self.streamer is not None and not self.per_row_streamer:
            self.streamer.put(self.prompt_rows.cpu())
        tokenizer, settings = self.tokenizer, self.settings
        while True:
            cuts: dict[int, int] = {}
            to_generate: list[int] = []
            can_draft: list[int] = []  # rows with a complete sentence that may generate past it
            for r in range(self.batch):
                if self.finished[r]:
                    continue
                ids, start = self.ids[r], self.start[r]
                eos_pos = next((i for i in range(start, len(ids)) if ids[i] in settings.eos_ids), None)
                region_end = eos_pos if eos_pos is not None else len(ids)
                final = eos_pos is not None or self.budget_left(r) <= 0 or self.user_stopped[r]
                if start >= region_end:
                    if eos_pos is not None:
                        tail = ids[eos_pos:]
                        self.emit(r, AlignmentRecord(eos_pos, tail, list(tail), "", "", aligned=False))
                        self.finish(r)
                        continue
                    if final:
                        self.finish(r)
                        continue
                cut = self.round_cut[r]
                if cut is None:
                    cut = find_token_boundary(
                        tokenizer,
                        ids,
                        start,
                        region_end,
                        final=final,
                        terminators=settings.terminators,
                        max_sentence_tokens=settings.max_sentence_tokens,
                    )
                if cut is None:
                    to_generate.append(r)
                else:
                    cuts[r] = cut
                    if not final:
                        can_draft.append(r)
            if to_generate:
                # Rows with a complete sentence wait while the others finish theirs: held, or drafting
                # their next sentence (kept if the aligner leaves theirs unchanged).
                self.upstream_round(to_generate, can_draft if self.drafting else [])
            elif cuts:
                self.align(cuts)
            else:
                break

    def upstream_round(self, rows: list[int], drafting: list[int]) -> None:
        """Generate until every row in ``rows`` has completed its sentence (plus look-ahead).

        Rows in ``drafting`` already have a complete sentence waiting for the aligner; they keep
        generating (a draft of what follows it) instead of being held.
        """
        if any(self.finished[r] for r in self.slots):
            # Finished rows leave the batch: they would only be padded from now on.
            keep = [i for i, r in enumerate(self.slots) if not self.finished[r]]
            if not self.layout.select(keep):
                self.note_reset()
            self.slots = [self.slots[i] for i in keep]
        slots = self.slots
        fed = set(rows) | set(drafting)
        fed_slots = [i for i, r in enumerate(slots) if r in fed]
        limits = [self.budget_left(r) if r in fed else None for r in slots]
        self.criteria.reset(
            [self.start[r] for r in slots],
            [r in fed for r in slots],
            sentence_ids=[self.ids[r][max(self.start[r] - 1, 0) :] for r in slots],
            max_new_tokens=limits,
            complete=[r in drafting for r in slots],
        )
        round_input = self.layout.prepare_round([self.ids[r] for r in slots], fed_slots)
        round_config = copy.copy(self.config)
        round_config.max_new_tokens = max(limit for limit in limits if limit is not None)
        if self.draft is not None:
            self.draft.first = True
        out = GenerationMixin.generate(
            self.model,
            round_input.input_ids,
            attention_mask=round_input.attention_mask,
            generation_config=round_config,
            logits_processor=self.processors,
            stopping_criteria=self.stopping,
            past_key_values=self.cache,
            streamer=self.draft,
            tokenizer=self.tokenizer,
            **self.model_kwargs,
        )
        block_end = round_input.input_ids.shape[1]
        produced = {i: self.criteria.produced[i] for i in fed_slots}
        for i in fed_slots:
            r = slots[i]
            self.ids[r].extend(out[i, block_end : block_end + produced[i]].tolist())
            if r in drafting:
                continue  # its pending sentence end (round_cut) stays as it is
            self.round_cut[r] = self.criteria.cuts[i]
            if (self.criteria.stopped_early[i] or not self.criteria.done[i]) and self.budget_left(r) > 0:
                self.user_stopped[r] = True  # a stopping criterion of the user's ended the row: align what there is
        real = self.layout.absorb_round(out, round_input, produced)
        self.stats.rounds += 1
        forwarded = out.shape[1] - 1 - round_input.block_start  # the last sampled token is not forwarded
        self.stats.upstream_columns += forwarded
        self.stats.upstream_slots += len(slots) * forwarded
        self.stats.upstream_real_tokens += real
        self.stats.refed_tokens += round_input.refed
        self.stats.peak_cache_columns = max(self.stats.peak_cache_columns, self.layout.width)

    def check_correction(self, corrected: Any, content: str, lead: str, trail: str) -> tuple[str | None, list[int] | None]:
        """Validate one correction; returns ``(problem, corrected_ids)``, ids ``None`` when unchanged or unusable."""
        if not isinstance(corrected, str):
            return f"the aligner returned {type(corrected).__name__}, not str, for sentence {content!r}", None
        if not corrected.strip():
            return f"the aligner returned empty text for sentence {content!r}", None
        corrected = corrected.strip()
        if corrected == content:
            return None, None
        try:
            corrected_ids = tokenize_plain_text(self.tokenizer, lead + corrected + trail)
        except ValueError as err:
            return f"the aligner's correction of sentence {content!r} is unusable: {err}", None
        n_tokens = len(corrected_ids) - len(tokenize_plain_text(self.tokenizer, lead + trail))
        if n_tokens > self.settings.max_correction_tokens:
            return (
                f"the aligner's correction of sentence {content!r} has {n_tokens} tokens, over "
                f"max_correction_tokens={self.settings.max_correction_tokens}: {corrected[:200]!r}",
                None,
            )
        return None, corrected_ids

    def align(self, cuts: dict[int, int]) -> None:
        """One aligner call for every row with a complete sentence, then the splices."""
        tokenizer = self.tokenizer
        pending: list[tuple[int, int, str, str, str, str]] = []
        requests: list[AlignmentRequest] = []
        for r, cut in sorted(cuts.items()):
            ids, start = self.ids[r], self.start[r]
            original_text = decode_span(tokenizer, ids, start, cut)
            lead, content, trail = split_whitespace(original_text)
            if not content:
                piece = ids[start:cut]
                self.emit(r, AlignmentRecord(start, piece, list(piece), original_text, original_text, aligned=False))
                self.advance(r, cut)
                continue
            prefix = tokenizer.decode(ids[self.prompt_len[r] : start], skip_special_tokens=True).strip()
            requests.append(AlignmentRequest(question=self.questions[r], prefix=prefix, last=content))
            pending.append((r, cut, original_text, lead, content, trail))
        if not requests:
            return
        rows_named = ", ".join(str(p[0]) for p in pending)
        only = pending[0] if len(pending) == 1 else None
        try:
            answers = self.correct(requests)
        except Exception as err:
            where = f"sentence {only[4]!r}" if only else f"a batch of {len(requests)} sentences (rows {rows_named})"
            raise self.fail(
                f"the aligner raised {type(err).__name__} on {where}: {err}",
                StreamAlignmentError,
                only[0] if only else None,
                only[4] if only else None,
            ) from err
        self.stats.aligner_calls += 1
        if not isinstance(answers, (list, tuple)) or len(answers) != len(requests):
            raise self.fail(
                f"the aligner must return one correction per request ({len(requests)}, rows {rows_named}); got {answers!r}",
                AlignerOutputError,
                only[0] if only else None,
                only[4] if only else None,
            )
        failure: tuple[int, str, str] | None = None
        for (r, cut, original_text, lead, content, trail), answer in zip(pending, answers, strict=True):
            self.stats.sentences_aligned += 1
            problem, corrected_ids = self.check_correction(answer, content, lead, trail)
            if problem is not None:
                if self.invalid_correction == "raise":
                    failure = failure or (r, problem, content)
                    continue  # this row keeps its draft; the other rows' corrections still go in
                where = f"row {r}: " if self.batch > 1 else ""
                warnings.warn(where + problem + "; keeping the original sentence", UserWarning, stacklevel=4)
            start = self.start[r]
            original_ids = self.ids[r][start:cut]
            if corrected_ids is None:
                # ---- unchanged: keep the tokens, the look-ahead and the cache as they are.
                self.emit(r, AlignmentRecord(start, original_ids, list(original_ids), original_text, original_text))
                self.advance(r, cut)
                continue
            self.splice(r, cut, corrected_ids, original_text)
        if not self.layout.crop_trailing():
            self.note_reset()
        if self.cache is not None and has_sliding_layers(self.cache) and cache_can_crop(self.cache):
            if all(self.layout.placed(i) <= self.start[r] for i, r in enumerate(self.slots)):
                trim_cache(self.cache)  # every cached token is accepted for good
        if failure is not None:
            row, problem, content = failure
            raise self.fail(problem, AlignerOutputError, row, content)

    def advance(self, row: int, cut: int) -> None:
        self.start[row] = cut
        self.round_cut[row] = None

    def splice(self, row: int, cut: int, corrected_ids: list[int], original_text: str) -> None:
        """Put ``corrected_ids`` in place of the sentence ``ids[row][start:cut]`` (``original_text``) and
        its look-ahead."""
        assert not self.special_ids.intersection(corrected_ids)
        self.stats.sentences_changed += 1
        ids, start = self.ids[row], self.start[row]
        original_ids = ids[start:cut]
        common = longest_common_prefix(original_ids, corrected_ids)
        new = ids[:start] + corrected_ids
        room = self.prompt_len[row] + self.budget - len(new)
        if room < 0:  # the correction overruns max_new_tokens: keep what fits, then stop
            corrected_ids = corrected_ids[: len(corrected_ids) + room]
            new = new[: self.prompt_len[row] + self.budget]
        self.ids[row] = new
        self.layout.replace(self.slots.index(row), start + common)
        shown_text = decode_span(self.tokenizer, new, start, len(new))
        self.emit(row, AlignmentRecord(start, original_ids, list(corrected_ids), original_text, shown_text))
        self.advance(row, len(new))

    def note_reset(self) -> None:
        self.stats.cache_resets += 1
        if not self.warned_fallback:
            warnings.warn(
                f"stream alignment: {type(self.cache).__name__} cannot be cut back; re-prefilling after "
                "each correction (exact, but slower)",
                UserWarning,
                stacklevel=4,
            )
            self.warned_fallback = True


@torch.no_grad()
def stream_aligned_generate(
    model: Any,
    inputs: torch.Tensor | None = None,
    *,
    aligner: Any,
    tokenizer: Any = None,
    aligner_question: str | list[str] | None = None,
    max_sentence_tokens: int | None = None,
    max_correction_tokens: int | None = None,
    terminators: str | None = None,
    invalid_correction: str = "raise",
    completed_rows: str = "draft",
    generation_config: Any = None,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    streamer: Any = None,
    **kwargs: Any,
) -> torch.LongTensor | StreamAlignedGenerateOutput:
    """Generate with sentence-level alignment. ``model.generate(..., aligner=...)`` calls this.

    Works on a batch of any size (left- or right-padded, with ``attention_mask``) and with
    ``num_return_sequences > 1`` when sampling. Each row finds its own sentence ends; rows whose
    sentence is complete wait (drafting ahead, or held: ``completed_rows``) until the others complete
    theirs, then all of them are corrected in one aligner call and the rows continue together. Every
    row gets exactly what it gets alone.

    Args:
        model: the upstream causal LM.
        inputs: prompt ids ``(batch, prompt_len)`` (or pass ``input_ids=``).
        aligner: a :class:`StreamAligner`, an object with ``correct(list[AlignmentRequest])``, or
            ``fn(question, prefix, last) -> str``.
        tokenizer: the upstream tokenizer (default: the one given to :func:`enable_stream_alignment`).
        aligner_question: the question shown to the aligner, one string or one per prompt (default: the
            last user message of a chat prompt, else the decoded prompt).
        max_sentence_tokens: cut a sentence that never ends after this many tokens (default 256, or
            the aligner config's).
        max_correction_tokens: reject corrections longer than this (default 256, or the aligner config's).
        terminators: sentence terminators (default ``.!?…。！？``).
        invalid_correction: what to do when the aligner returns unusable text (not a string, empty, over
            ``max_correction_tokens``, or text that would become control tokens): ``"raise"`` (default) an
            :class:`AlignerOutputError` naming the row, after applying the other rows' corrections; or
            ``"keep_original"``: keep the sentence as generated, with a warning. An exception raised by
            the aligner itself always propagates as :class:`StreamAlignmentError`.
        completed_rows: in a batch, what a row whose sentence is complete does while the other rows
            finish theirs: ``"draft"`` (default) keeps generating its next sentence, which is kept if the
            aligner leaves the finished sentence unchanged and discarded otherwise (never more forwards
            than holding, exact either way); ``"hold"`` pads it until the round ends (the paper's lockstep).
        generation_config, logits_processor, stopping_criteria, **kwargs: as in ``generate``;
            ``max_new_tokens`` bounds each row's final, corrected output. A cache passed as
            ``past_key_values`` is **mutated** (filled, cut back after corrections).
        streamer: at batch size 1 any ``transformers`` streamer: it receives the prompt once, each
            accepted corrected sentence, then ``end()``; with ``put_draft`` it also receives the
            upstream's draft tokens. For batches, a streamer with ``per_row = True`` (e.g.
            ``StreamAlignerIteratorStreamer(tok, per_row=True)``) receives ``put_alignment(record)``
            for each accepted piece (``record.row`` says which row) and ``end_row(row)``.

    Returns:
        ``sequences`` (a ``LongTensor``, rows laid out as ``generate`` does: the prompt as given, the
        generated tokens, right-padding) or, with ``return_dict_in_generate=True``, a
        :class:`StreamAlignedGenerateOutput` with ``sequences``, ``alignment_trace``,
        ``alignment_stats`` and, at batch size 1, ``past_key_values`` (a batch's cache holds masked
        holes and does not match ``sequences``, so it is not returned).

    Raises:
        ValueError: unsupported settings (beam search, assisted decoding, no tokenizer, ...).
        StreamAlignmentError: the aligner failed or returned unusable text; the error says which row
            and carries every row's partial output.
    """
    if tokenizer is None:
        tokenizer = getattr(model, "_stream_aligner_tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "stream-aligned generation needs the upstream tokenizer: pass tokenizer=... to generate() "
            "or enable_stream_alignment(model, tokenizer)"
        )
    correct = as_correction_fn(aligner)
    if invalid_correction not in ("raise", "keep_original"):
        raise ValueError(f"invalid_correction must be 'raise' or 'keep_original', got {invalid_correction!r}")
    if completed_rows not in ("draft", "hold"):
        raise ValueError(f"completed_rows must be 'draft' or 'hold', got {completed_rows!r}")
    settings = _settings_from(
        aligner,
        {
            "terminators": terminators,
            "max_sentence_tokens": max_sentence_tokens,
            "max_correction_tokens": max_correction_tokens,
        },
    )

    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    if input_ids is None:
        raise ValueError("stream-aligned generation needs a prompt (input_ids)")
    if input_ids.dim() == 1:
        input_ids = input_ids[None, :]
    attention_mask = kwargs.pop("attention_mask", None)
    if attention_mask is not None and attention_mask.dim() == 1:
        attention_mask = attention_mask[None, :]

    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    model_kwargs = config.update(**kwargs)
    _validate_generation(config, model_kwargs)

    eos_ids = _as_list(config.eos_token_id) or _as_list(getattr(tokenizer, "eos_token_id", None))
    settings.eos_ids = frozenset(eos_ids)
    if config.pad_token_id is None:
        config.pad_token_id = eos_ids[0] if eos_ids else getattr(tokenizer, "pad_token_id", None)
    if config.pad_token_id is None:
        raise ValueError("the upstream needs a pad_token_id or an eos_token_id")
    if eos_ids and config.eos_token_id is None:
        config.eos_token_id = eos_ids
    return_dict = bool(config.return_dict_in_generate)
    config.return_dict_in_generate = False

    prompt_mask = _prompt_mask(input_ids, attention_mask, int(config.pad_token_id), eos_ids)
    n_inputs = input_ids.shape[0]
    expand = int(config.num_return_sequences or 1)
    config.num_return_sequences = 1
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(expand, dim=0)
    empty = [r for r in range(input_ids.shape[0]) if not bool(prompt_mask[r].any())]
    if empty:
        raise ValueError(f"row(s) {empty} of the batch have no prompt tokens (their attention_mask is all 0)")
    batch = input_ids.shape[0]

    budget = _budget(config, input_ids.shape[1])
    config.max_length = None
    user_criteria = list(stopping_criteria or [])
    # Stop strings and max_time apply per row across rounds: run them with the user's criteria.
    if config.stop_strings:
        user_criteria.append(StopStringCriteria(tokenizer, config.stop_strings))
        config.stop_strings = None
    if config.max_time is not None:
        user_criteria.append(MaxTimeCriteria(config.max_time))
        config.max_time = None

    # The KV cache we keep across rounds.
    use_cache = config.use_cache if config.use_cache is not None else True
    cache = model_kwargs.pop("past_key_values", None)
    user_cache = cache is not None
    static = config.cache_implementation == "static" or isinstance(cache, StaticCache)
    warned_fallback = False
    if static and batch > 1:
        raise ValueError(
            "batched stream alignment needs a cache that can be cut back per row: use the default dynamic "
            "cache (a StaticCache only works for one sequence)"
        )
    if use_cache:
        if cache is None and static:
            cache = StaticCache(config=model.config, max_cache_len=input_ids.shape[1] + budget + 1)
            config.cache_implementation = None
        elif cache is None:
            if config.cache_implementation not in (None, "dynamic"):
                raise ValueError(
                    f"cache_implementation={config.cache_implementation!r} is not supported with an aligner; "
                    "use the default dynamic cache or 'static'"
                )
            cache = make_rollback_cache(model)
        else:
            prepare_user_cache(cache)
            filled = cache.get_seq_length()
            if filled > input_ids.shape[1] or (filled and expand > 1):
                raise ValueError(
                    f"past_key_values holds {filled} tokens; with an aligner it must be empty or hold a prefix of "
                    "the prompt (and num_return_sequences must be 1)"
                )
    else:
        cache = None
    if cache is not None and static:
        warnings.warn(
            "stream alignment: a StaticCache cannot be cut back; after each correction the whole sequence is "
            "re-prefilled (exact, but slower). Use the default dynamic cache for speed.",
            UserWarning,
            stacklevel=3,
        )
        warned_fallback = True
    if streamer is not None and batch > 1 and not getattr(streamer, "per_row", False):
        raise ValueError(
            f"streamer {type(streamer).__name__} shows one sequence, but the batch has {batch} rows: use "
            "StreamAlignerIteratorStreamer(tokenizer, per_row=True) for batches"
        )
    if batch > 1 and (
        (config.repetition_penalty or 1.0) != 1.0 or (config.no_repeat_ngram_size or 0) > 0 or logits_processor
    ):
        warnings.warn(
            "in a batch, logits processors see the batch's padded layout: masked columns (padding, held steps and "
            "replaced sentences) are in input_ids, and rows that finished leave the batch. repetition_penalty, "
            "no_repeat_ngram_size and custom processors that read input_ids can therefore differ from running "
            "each row alone",
            UserWarning,
            stacklevel=3,
        )
    rows = _rows(input_ids, prompt_mask)
    questions = _questions(aligner_question, tokenizer, rows, n_inputs, expand)
    if batch > 1 and (has_sliding_layers(cache) if cache is not None else _model_has_sliding_window(model)):
        if user_cache:
            raise ValueError(
                "a batch on a sliding-window model is aligned one row at a time, which cannot use one "
                "past_key_values for all rows: do not pass past_key_values"
            )
        return _row_by_row(
            model,
            input_ids,
            prompt_mask,
            questions=questions,
            call=dict(
                aligner=aligner,
                tokenizer=tokenizer,
                max_sentence_tokens=max_sentence_tokens,
                max_correction_tokens=max_correction_tokens,
                terminators=terminators,
                invalid_correction=invalid_correction,
                completed_rows=completed_rows,
                generation_config=config,
                logits_processor=logits_processor,
                stopping_criteria=StoppingCriteriaList(user_criteria),
                use_cache=use_cache,
                max_new_tokens=budget,
                **model_kwargs,
            ),
            streamer=streamer,
            return_dict=return_dict,
        )

    run = _Run(
        model=model,
        tokenizer=tokenizer,
        correct=correct,
        settings=settings,
        config=config,
        model_kwargs=model_kwargs,
        prompt_rows=input_ids,
        prompt_mask=prompt_mask,
        rows=rows,
        questions=questions,
        budget=budget,
        cache=cache,
        streamer=streamer,
        user_processors=list(logits_processor or []),
        user_criteria=user_criteria,
        invalid_correction=invalid_correction,
        warned_fallback=warned_fallback,
        completed_rows=completed_rows,
    )
    run.run()
    sequences = run.sequences()
    if streamer is not None:
        streamer.end()
    if not return_dict:
        return sequences
    return StreamAlignedGenerateOutput(
        sequences=sequences,
        past_key_values=cache if batch == 1 else None,
        alignment_trace=run.records,
        alignment_stats=run.stats,
    )


def _rows(input_ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's real (unmasked) tokens, without padding."""
    return [
        [t for t, m in zip(row, m_row, strict=True) if m]
        for row, m_row in zip(input_ids.tolist(), mask.tolist(), strict=True)
    ]


def _model_has_sliding_window(model: Any) -> bool:
    return has_sliding_layers(DynamicCache(config=model.config))


class _RowStreamer:
    """Passes one row's events of a row-by-row run to a per-row streamer under the row's batch index."""

    per_row = True

    def __init__(self, target: Any, row: int) -> None:
        self.target, self.row = target, row

    def put_alignment(self, record: AlignmentRecord) -> None:
        record.row = self.row
        if hasattr(self.target, "put_alignment"):
            self.target.put_alignment(record)

    def end_row(self, row: int) -> None:
        if hasattr(self.target, "end_row"):
            self.target.end_row(self.row)

    def put(self, value: Any) -> None:
        pass

    def end(self) -> None:
        pass


def _row_by_row(
    model: Any,
    input_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    questions: list[str],
    call: dict[str, Any],
    streamer: Any,
    return_dict: bool,
) -> Any:
    """Batched stream alignment for sliding-window models: one row at a time (exact, not batched).

    A sliding window counts cache columns, so the masked holes of a batched layout would shift it;
    rows are generated one after another instead, each exactly as alone.
    """
    warnings.warn(
        f"{type(model).__name__} has sliding-window attention: batched stream alignment runs the {input_ids.shape[0]} "
        "rows one after another (exact, but without batching speed-ups)",
        UserWarning,
        stacklevel=3,
    )
    pad = int(call["generation_config"].pad_token_id)
    results: list[list[int]] = []
    traces: list[list[AlignmentRecord]] = []
    stats = AlignmentStats()
    width = input_ids.shape[1]

    def merged(upto: list[list[int]]) -> torch.Tensor:
        rows = upto + [input_ids[r].tolist() for r in range(len(upto), input_ids.shape[0])]
        longest = max(len(r) for r in rows)
        return torch.tensor([r + [pad] * (longest - len(r)) for r in rows], dtype=torch.long, device=input_ids.device)

    def shift(record: AlignmentRecord, row: int, offset: int) -> AlignmentRecord:
        record.row = row
        record.start += offset
        return record

    for r in range(input_ids.shape[0]):
        row_mask = prompt_mask[r]
        first = int(row_mask.nonzero()[0])
        last = int(row_mask.nonzero()[-1]) + 1
        real = input_ids[r : r + 1, first:last]
        mask = prompt_mask[r : r + 1, first:last]
        offset = width - real.shape[1]  # where this row's generated tokens start in the batch layout
        try:
            out = stream_aligned_generate(
                model,
                real,
                attention_mask=mask,
                aligner_question=questions[r],
                streamer=_RowStreamer(streamer, r) if streamer is not None else None,
                return_dict_in_generate=True,
                **call,
            )
        except StreamAlignmentError as err:
            partial = err.sequences[0].tolist()
            row_seq = input_ids[r].tolist() + partial[real.shape[1] :]
            rows = [*results, row_seq]
            done_traces = [*traces, [shift(x, r, offset) for x in err.alignment_trace[0]]]
            done_traces += [[] for _ in range(len(rows), input_ids.shape[0])]
            sequences = merged(rows)
            texts = [
                call["tokenizer"].decode(row[width:], skip_special_tokens=True) for row in sequences.tolist()
            ]
            raise type(err)(
                f"row {r}: {err}",
                sequences=sequences,
                alignment_trace=done_traces,
                partial_texts=texts,
                sentence=err.sentence,
                row=r,
            ) from err
        seq = out.sequences[0].tolist()
        results.append(input_ids[r].tolist() + seq[real.shape[1] :])
        traces.append([shift(x, r, offset) for x in out.alignment_trace[0]])
        for key, value in out.alignment_stats.to_dict().items():
            if key == "peak_cache_columns":
                stats.peak_cache_columns = max(stats.peak_cache_columns, value)
            elif key != "held_share":
                setattr(stats, key, getattr(stats, key) + value)
    sequences = merged(results)
    if streamer is not None:
        streamer.end()
    if not return_dict:
        return sequences
    return StreamAlignedGenerateOutput(sequences=sequences, alignment_trace=traces, alignment_stats=stats)


def _pop_aligner_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in _ALIGNER_KWARGS if k in kwargs}


class StreamAlignedGenerationMixin:
    """Adds ``aligner=`` to ``generate``. Put it before the model class in the bases.

    Without ``aligner=`` (or with ``aligner=None``) ``generate`` is the stock one, untouched.

    Example:

        >>> from transformers import LlamaForCausalLM
        >>> from transformers_stream_aligner import StreamAlignedGenerationMixin
        >>> class AlignedLlama(StreamAlignedGenerationMixin, LlamaForCausalLM):
        ...     pass
        >>> # AlignedLlama.from_pretrained(...).generate(ids, aligner=fn, tokenizer=tok)
    """

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        aligner_kwargs = _pop_aligner_kwargs(kwargs)
        aligner = aligner_kwargs.pop("aligner", None)
        if aligner is None:
            if aligner_kwargs:
                raise ValueError(f"{sorted(aligner_kwargs)} only apply together with aligner=...")
            return super().generate(*args, **kwargs)  # type: ignore[misc]
        return _dispatch(self, args, kwargs, aligner, aligner_kwargs)


def _dispatch(model: Any, args: tuple, kwargs: dict[str, Any], aligner: Any, aligner_kwargs: dict[str, Any]) -> Any:
    if args:
        if len(args) > 1:
            raise ValueError("pass generate() arguments other than the prompt by keyword when using an aligner")
        kwargs["inputs"] = args[0]
    if "inputs" in kwargs and kwargs["inputs"] is None:
        kwargs.pop("inputs")
    for name in ("tokenizer",):
        if name in kwargs and kwargs[name] is None:
            kwargs.pop(name)
    return stream_aligned_generate(model, aligner=aligner, **aligner_kwargs, **kwargs)


def enable_stream_alignment(model: Any, tokenizer: Any = None) -> Any:
    """Patch ``model`` (this instance only) so that ``model.generate(..., aligner=...)`` works.

    ``tokenizer`` (the upstream's) is remembered for calls that do not pass one, e.g. from
    ``pipeline("text-generation")``. Returns the same model. Calling it twice is harmless.

    Example:

        >>> from transformers_stream_aligner import enable_stream_alignment
        >>> model = enable_stream_alignment(model, tokenizer)  # doctest: +SKIP
        >>> model.generate(ids, aligner=lambda q, prefix, last: last, max_new_tokens=50)  # doctest: +SKIP
    """
    if not isinstance(model, GenerationMixin):
        raise TypeError(f"enable_stream_alignment needs a transformers generative model, got {type(model).__name__}")
    if tokenizer is not None:
        model._stream_aligner_tokenizer = tokenizer
    if getattr(model, "_stream_alignment_enabled", False):
        return model
    original: Callable[..., Any] = model.generate

    @torch.no_grad()
    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        aligner_kwargs = _pop_aligner_kwargs(kwargs)
        aligner = aligner_kwargs.pop("aligner", None)
        if aligner is None:
            if aligner_kwargs:
                raise ValueError(f"{sorted(aligner_kwargs)} only apply together with aligner=...")
            return original(*args, **kwargs)
        return _dispatch(self, args, kwargs, aligner, aligner_kwargs)

    generate.__doc__ = stream_aligned_generate.__doc__
    generate.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
    model.generate = types.MethodType(generate, model)
    model._stream_alignment_enabled = True
    return model
