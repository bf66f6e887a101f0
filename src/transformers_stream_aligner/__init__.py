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

from .aligner import AlignmentRequest, StreamAligner, SupportsCorrect, UnfinishedCorrection, as_correction_fn
from .custom_generate import MIN_TRANSFORMERS_VERSION, export_custom_generate, stream_aligned_decoding
from .generation import StreamAlignedGenerationMixin, enable_stream_alignment, stream_aligned_generate
from .logits_process import HoldCompletedRowsLogitsProcessor
from .outputs import (
    AlignerOutputError,
    AlignmentRecord,
    AlignmentStats,
    StreamAlignedGenerateOutput,
    StreamAlignmentCancelled,
    StreamAlignmentError,
)
from .sentence_splitter import DEFAULT_TERMINATORS, split_sentences
from .serving_config import ServingConfig
from .stopping_criteria import SentenceBoundaryCriteria
from .stream_aligner_config import CONFIG_NAME, GEMMA_WRAPPER, REFERENCE_INSTRUCTION_TEMPLATE, StreamAlignerConfig
from .streamers import (
    AlignmentStreamerHooks,
    StreamAlignerAsyncIteratorStreamer,
    StreamAlignerIteratorStreamer,
    StreamAlignerStreamer,
    StreamEvent,
)
from .training_data import RECORD_FIELDS, TrainingDataError, encode_records, read_records, validate_records

_LAZY = {  # the training entry points import transformers.Trainer (and through it accelerate): loaded on first use
    "AlignerTrainingConfig": "training_config",
    "LoraArguments": "training_config",
    "TrainingResult": "training",
    "train_aligner": "training",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONFIG_NAME",
    "DEFAULT_TERMINATORS",
    "GEMMA_WRAPPER",
    "MIN_TRANSFORMERS_VERSION",
    "RECORD_FIELDS",
    "REFERENCE_INSTRUCTION_TEMPLATE",
    "AlignerOutputError",
    "AlignerTrainingConfig",
    "AlignmentRecord",
    "AlignmentRequest",
    "AlignmentStats",
    "AlignmentStreamerHooks",
    "HoldCompletedRowsLogitsProcessor",
    "LoraArguments",
    "SentenceBoundaryCriteria",
    "ServingConfig",
    "StreamAlignedGenerateOutput",
    "StreamAlignedGenerationMixin",
    "StreamAligner",
    "StreamAlignerConfig",
    "StreamAlignerAsyncIteratorStreamer",
    "StreamAlignerIteratorStreamer",
    "StreamAlignerStreamer",
    "StreamAlignmentCancelled",
    "StreamAlignmentError",
    "StreamEvent",
    "SupportsCorrect",
    "TrainingDataError",
    "TrainingResult",
    "UnfinishedCorrection",
    "__version__",
    "as_correction_fn",
    "export_custom_generate",
    "enable_stream_alignment",
    "encode_records",
    "read_records",
    "split_sentences",
    "stream_aligned_decoding",
    "stream_aligned_generate",
    "train_aligner",
    "validate_records",
]
