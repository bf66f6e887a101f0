"""The plan of one stream-aligned ``generate`` call: its arguments, resolved once.

:func:`~..generation.generate.stream_aligned_generate` turns its arguments into a :class:`GenerationPlan` in numbered
``_prepare_*`` steps (as ``transformers``' own ``generate`` does); :class:`~.loop.AlignmentLoop` runs it. Nothing
in a plan is looked up again while the loop runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..outputs import AlignmentStats
from .aligner_call import CorrectionFn
from .engines.base import UpstreamEngine
from .row_state import RowState
from .streamers import StreamerDriver

__all__ = ["GenerationPlan", "SentenceSettings"]


class SentenceSettings(Protocol):
    """What the data path reads of the aligner's settings (an aligner's ``StreamAlignerConfig`` is one): which
    characters end a sentence, where a sentence that never ends is cut, and how long a correction may be."""

    terminators: str
    max_sentence_tokens: int
    max_correction_tokens: int


@dataclass
class GenerationPlan:
    """Everything the loop needs for one call.

    Attributes:
        tokenizer: the upstream tokenizer.
        correct: the aligner as ``fn(list[AlignmentRequest]) -> list[str]``.
        settings: sentence and correction settings (:class:`SentenceSettings`): the aligner's ``StreamAlignerConfig``
            (or the defaults) with the call's overrides applied by ``dataclasses.replace``.
        prompt_ids: the prompt rows as given (``num_return_sequences`` copies of each), ``(batch, width)``.
        rows: each row's prompt tokens without padding.
        questions: what the aligner is told each row answers.
        max_new_tokens: each row's budget of generated tokens.
        eos_token_ids: the upstream's end-of-answer tokens; pad_token_id: its padding.
        invalid_correction: ``"raise"`` or ``"keep_original"``.
        completed_rows: ``"draft"`` or ``"hold"``.
        streamer: the user's streamer, adapted.
        engine_factory: ``factory(rows, stats) -> UpstreamEngine``: an engine for those rows.
        row_by_row: run the rows one after another, each with its own engine (sliding-window batches).
        return_dict: return a :class:`~.outputs.StreamAlignedGenerateOutput`.
    """

    tokenizer: Any
    correct: CorrectionFn
    settings: SentenceSettings
    prompt_ids: torch.LongTensor
    rows: list[list[int]]
    questions: list[str]
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    pad_token_id: int
    invalid_correction: str
    completed_rows: str
    streamer: StreamerDriver
    engine_factory: Callable[[list[RowState], AlignmentStats], UpstreamEngine]
    row_by_row: bool = False
    return_dict: bool = False

    @property
    def batch_size(self) -> int:
        return len(self.rows)
