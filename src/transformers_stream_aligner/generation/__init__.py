"""The ways into stream alignment, as transformers' ``generation/`` is the way into ``generate``.

- :mod:`.generate`: ``stream_aligned_generate``, the arguments become a plan in numbered steps (:mod:`.steps`);
- :mod:`.mixin`: ``StreamAlignedGenerationMixin`` and ``enable_stream_alignment`` (``model.generate(..., aligner=...)``);
- :mod:`.completion`: ``stream_aligned_completion``, the same with the upstream on a vLLM server;
- :mod:`.fields`: which ``GenerationConfig`` fields are exact, handled or refused;
- :mod:`.custom_generate`: ``generate(custom_generate=...)`` and the Hub folder.

From here the data path is :mod:`..runtime`.
"""

from ..lazy import lazy_exports

_EXPORTS = {"StreamAlignedGenerationMixin": "mixin", "enable_stream_alignment": "mixin",
            "stream_aligned_generate": "generate"}  # fmt: skip


# the entry points, imported on first use (torch and transformers load then, not with the package)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
