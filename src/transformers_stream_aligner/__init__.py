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

from typing import TYPE_CHECKING

from ._moved import install as _install_moved
from .lazy import lazy_exports
from .version import __version__

_install_moved()  # the module paths of earlier releases still import, with a DeprecationWarning (_moved.py)

# Every public name is imported from its module on first use (PEP 562), as transformers does: ``import
# transformers_stream_aligner`` (and ``stream-aligner --help``) stays quick; torch and transformers load when a name
# that needs them is first touched.
_LAZY = {
    "AlignmentRequest": "runtime.aligner_call", "StreamAligner": "aligners.model", "SupportsCorrect": "runtime.aligner_call",
    "UnfinishedCorrection": "runtime.aligner_call", "RejectedCorrection": "runtime.aligner_call",
    "as_correction_fn": "runtime.aligner_call",
    "CalculationError": "errors", "expand_calculations": "aligners.calculator",
    "MIN_TRANSFORMERS_VERSION": "serving.custom_generate", "export_custom_generate": "serving.custom_generate",
    "stream_aligned_decoding": "generation.custom_generate",
    "StreamAlignedGenerationMixin": "generation.mixin", "enable_stream_alignment": "generation.mixin",
    "stream_aligned_generate": "generation.generate",
    "HoldCompletedRowsLogitsProcessor": "runtime.logits_process",
    "AlignerOutputError": "errors", "AlignmentRecord": "outputs", "AlignmentStats": "outputs",
    "StreamAlignedGenerateOutput": "outputs", "StreamAlignmentCancelled": "errors", "StreamAlignmentError": "errors",
    "DEFAULT_TERMINATORS": "runtime.boundary.splitter", "split_sentences": "runtime.boundary.splitter",
    "ServingConfig": "serving.served_aligners",
    "SentenceBoundaryCriteria": "runtime.boundary.stopping_criteria",
    "CONFIG_NAME": "aligners.config", "GEMMA_WRAPPER": "aligners.config",
    "REFERENCE_INSTRUCTION_TEMPLATE": "aligners.config", "StreamAlignerConfig": "aligners.config",
    "AlignmentStreamerHooks": "runtime.streamers", "StreamAlignerAsyncIteratorStreamer": "runtime.streamers",
    "StreamAlignerIteratorStreamer": "runtime.streamers", "StreamAlignerStreamer": "runtime.streamers", "StreamEvent": "runtime.streamers",
    "RECORD_FIELDS": "training.data", "TrainingDataError": "errors", "encode_records": "training.data",
    "read_records": "training.data", "validate_records": "training.data",
    "AlignerTrainingConfig": "training.config", "LoraArguments": "training.config",
    "TrainingResult": "training.trainer", "train_aligner": "training.trainer",
}  # fmt: skip

if TYPE_CHECKING:
    from .aligners.calculator import expand_calculations
    from .aligners.config import CONFIG_NAME, GEMMA_WRAPPER, REFERENCE_INSTRUCTION_TEMPLATE, StreamAlignerConfig
    from .aligners.model import StreamAligner
    from .errors import (
        AlignerOutputError,
        CalculationError,
        StreamAlignmentCancelled,
        StreamAlignmentError,
        TrainingDataError,
    )
    from .generation.custom_generate import stream_aligned_decoding
    from .generation.generate import stream_aligned_generate
    from .generation.mixin import StreamAlignedGenerationMixin, enable_stream_alignment
    from .outputs import AlignmentRecord, AlignmentStats, StreamAlignedGenerateOutput
    from .runtime.aligner_call import (
        AlignmentRequest,
        RejectedCorrection,
        SupportsCorrect,
        UnfinishedCorrection,
        as_correction_fn,
    )
    from .runtime.boundary.splitter import DEFAULT_TERMINATORS, split_sentences
    from .runtime.boundary.stopping_criteria import SentenceBoundaryCriteria
    from .runtime.logits_process import HoldCompletedRowsLogitsProcessor
    from .runtime.streamers import (
        AlignmentStreamerHooks,
        StreamAlignerAsyncIteratorStreamer,
        StreamAlignerIteratorStreamer,
        StreamAlignerStreamer,
        StreamEvent,
    )
    from .serving.custom_generate import MIN_TRANSFORMERS_VERSION, export_custom_generate
    from .serving.served_aligners import ServingConfig
    from .training.config import AlignerTrainingConfig, LoraArguments
    from .training.data import RECORD_FIELDS, encode_records, read_records, validate_records
    from .training.trainer import TrainingResult, train_aligner


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())  # once imported, a name is a plain attribute


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
