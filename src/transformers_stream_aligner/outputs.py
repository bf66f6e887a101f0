"""What stream-aligned ``generate`` returns and raises: per-piece records, work counters, the output class and the
errors (which carry everything generated so far)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transformers.generation.utils import GenerateDecoderOnlyOutput

from .errors import AlignerOutputError, StreamAlignmentCancelled, StreamAlignmentError

__all__ = [
    "AlignerOutputError",
    "AlignmentRecord",
    "AlignmentStats",
    "StreamAlignedGenerateOutput",
    "StreamAlignmentCancelled",
    "StreamAlignmentError",
]


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
            a finished row counts, held, until at most half of the batch is left and the finished rows leave it).
        upstream_real_tokens: of those, real tokens of a row (the rest are held rows and masked holes).
        refed_tokens: tokens taken back out of the cache and forwarded again (one per row and round at
            most, when a row had nothing new to feed).
        cache_resets: times the cache was emptied and re-filled because it could not be cut back.
        peak_cache_columns: the most columns the KV cache held (the longest row plus masked holes).
        upstream_requests: requests sent to a served upstream (the vLLM engine: one per row and round).
        upstream_prompt_tokens: prompt tokens of those requests (the server's prefix cache supplies most of them).
        upstream_new_prompt_tokens: of those, tokens the row's previous request had not sent or received (the
            corrected text after a splice; the rest can come from the prefix cache).
        draft_tokens_kept: tokens an overlapping upstream drafted while the aligner ran, then kept (the aligner left
            the sentence unchanged); ``draft_tokens_discarded``: drafted, then dropped (a correction changed the text).
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
    upstream_requests: int = 0
    upstream_prompt_tokens: int = 0
    upstream_new_prompt_tokens: int = 0
    draft_tokens_kept: int = 0
    draft_tokens_discarded: int = 0

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


