"""Engines run the upstream model for the alignment loop (the engine seam: :mod:`.base`).

* :class:`TransformersEngine` - ``transformers``' ``generate`` on a KV cache, in process.
"""

from .base import RoundOutcome, UpstreamEngine
from .transformers_engine import TransformersEngine

__all__ = ["RoundOutcome", "TransformersEngine", "UpstreamEngine"]
