"""transformers-stream-aligner: Stream Aligner (Lou et al., AAAI 2025) inside ``model.generate()``.

While an upstream causal LM generates, each completed sentence is rewritten by a small aligner
model; the correction replaces the sentence in ``input_ids``, the KV cache is cut back to the longest
common prefix, and generation continues from the corrected text.

Example:

    >>> from transformers_stream_aligner import StreamAligner, enable_stream_alignment
    >>> model = enable_stream_alignment(model, tokenizer)  # doctest: +SKIP
    >>> aligner = StreamAligner.from_pretrained("path/to/aligner")  # doctest: +SKIP
    >>> out = model.generate(input_ids, aligner=aligner, max_new_tokens=200)  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .aligner import AlignmentRequest, StreamAligner, SupportsCorrect, as_correction_fn
from .boundary import decode_span, find_token_boundary
from .generation import StreamAlignedGenerationMixin, enable_stream_alignment, stream_aligned_generate
from .logits_process import HoldCompletedRowsLogitsProcessor
from .outputs import (
    AlignerOutputError,
    AlignmentRecord,
    AlignmentStats,
    StreamAlignedGenerateOutput,
    StreamAlignmentError,
)
from .prompt import question_from_prompt
from .sentence_splitter import DEFAULT_TERMINATORS, find_sentence_end, split_sentences, split_whitespace
from .stopping_criteria import SentenceBoundaryCriteria
from .stream_aligner_config import CONFIG_NAME, GEMMA_WRAPPER, REFERENCE_INSTRUCTION_TEMPLATE, StreamAlignerConfig
from .streamers import StreamAlignerIteratorStreamer, StreamAlignerStreamer, StreamEvent
from .training_data import (
    IGNORE_INDEX,
    RECORD_FIELDS,
    EncodingReport,
    TrainingDataError,
    encode_record,
    encode_records,
    read_records,
    validate_records,
)


def __getattr__(name: str):
    # The training entry points import transformers.Trainer (and through it accelerate): load them lazily.
    if name == "AlignerTrainingConfig":
        from .training_config import AlignerTrainingConfig

        return AlignerTrainingConfig
    if name in ("train_aligner", "TrainingResult"):
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONFIG_NAME",
    "IGNORE_INDEX",
    "RECORD_FIELDS",
    "AlignerTrainingConfig",
    "EncodingReport",
    "TrainingDataError",
    "TrainingResult",
    "encode_record",
    "encode_records",
    "read_records",
    "train_aligner",
    "validate_records",
    "DEFAULT_TERMINATORS",
    "GEMMA_WRAPPER",
    "REFERENCE_INSTRUCTION_TEMPLATE",
    "AlignerOutputError",
    "AlignmentRecord",
    "AlignmentStats",
    "AlignmentRequest",
    "HoldCompletedRowsLogitsProcessor",
    "SentenceBoundaryCriteria",
    "StreamAlignedGenerateOutput",
    "StreamAlignedGenerationMixin",
    "StreamAligner",
    "StreamAlignerConfig",
    "StreamAlignerIteratorStreamer",
    "StreamAlignerStreamer",
    "StreamAlignmentError",
    "StreamEvent",
    "SupportsCorrect",
    "__version__",
    "as_correction_fn",
    "decode_span",
    "enable_stream_alignment",
    "find_sentence_end",
    "find_token_boundary",
    "question_from_prompt",
    "split_sentences",
    "split_whitespace",
    "stream_aligned_generate",
]
