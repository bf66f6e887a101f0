"""Stream Aligner as a transformers ``custom_generate`` method (transformers-stream-aligner).

While the model generates, each completed sentence is corrected by an aligner model; the correction replaces the
sentence, the KV cache is cut back to the longest common prefix, and generation continues from the corrected text.

This file only hands over to the installed package (``pip install transformers-stream-aligner``), which refuses to
run under a transformers that executes custom code without consent (older than 5.12.0, CVE-2026-80047).
"""

from transformers_stream_aligner.serving.custom_generate import check_transformers_version, generate

check_transformers_version()

__all__ = ["generate"]
