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

from typing import TYPE_CHECKING

# Every public name is imported from its module on first use (PEP 562), as transformers does: ``import
# transformers_stream_aligner`` (and ``stream-aligner --help``) stays quick; torch and transformers load when a name
# that needs them is first touched.
_LAZY = {
    "AlignmentRequest": "aligner", "StreamAligner": "aligner", "SupportsCorrect": "aligner",
    "UnfinishedCorrection": "aligner", "RejectedCorrection": "aligner", "as_correction_fn": "aligner",
    "CalculationError": "aligner_calculator", "expand_calculations": "aligner_calculator",
    "MIN_TRANSFORMERS_VERSION": "custom_generate", "export_custom_generate": "custom_generate",
    "stream_aligned_decoding": "custom_generate",
    "StreamAlignedGenerationMixin": "generation", "enable_stream_alignment": "generation",
    "stream_aligned_generate": "generation",
    "HoldCompletedRowsLogitsProcessor": "logits_process",
    "AlignerOutputError": "outputs", "AlignmentRecord": "outputs", "AlignmentStats": "outputs",
    "StreamAlignedGenerateOutput": "outputs", "StreamAlignmentCancelled": "outputs", "StreamAlignmentError": "outputs",
    "DEFAULT_TERMINATORS": "sentence_splitter", "split_sentences": "sentence_splitter",
    "ServingConfig": "serving_config",
    "SentenceBoundaryCriteria": "stopping_criteria",
    "CONFIG_NAME": "stream_aligner_config", "GEMMA_WRAPPER": "stream_aligner_config",
    "REFERENCE_INSTRUCTION_TEMPLATE": "stream_aligner_config", "StreamAlignerConfig": "stream_aligner_config",
    "AlignmentStreamerHooks": "streamers", "StreamAlignerAsyncIteratorStreamer": "streamers",
    "StreamAlignerIteratorStreamer": "streamers", "StreamAlignerStreamer": "streamers", "StreamEvent": "streamers",
    "RECORD_FIELDS": "training_data", "TrainingDataError": "training_data", "encode_records": "training_data",
    "read_records": "training_data", "validate_records": "training_data",
    "AlignerTrainingConfig": "training_config", "LoraArguments": "training_config",
    "TrainingResult": "training", "train_aligner": "training",
}  # fmt: skip

if TYPE_CHECKING:
    from .aligner import (
        AlignmentRequest,
        RejectedCorrection,
        StreamAligner,
        SupportsCorrect,
        UnfinishedCorrection,
        as_correction_fn,
    )
    from .aligner_calculator import CalculationError, expand_calculations
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
    from .training import TrainingResult, train_aligner
    from .training_config import AlignerTrainingConfig, LoraArguments
    from .training_data import RECORD_FIELDS, TrainingDataError, encode_records, read_records, validate_records


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "CalculationError",
    "HoldCompletedRowsLogitsProcessor",
    "LoraArguments",
    "RejectedCorrection",
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
    "expand_calculations",
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
