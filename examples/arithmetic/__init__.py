"""The arithmetic showcase: a small aligner that fixes SmolLM2's arithmetic while it answers.

* :mod:`.task` - seeded problems (held-in / held-out), the exact checker aligner, final-answer scoring;
* :mod:`.build_aligner` - the recipe of the trained aligner (``make aligner``), on the library's Python API;
* :mod:`.demo` - ``make demo``; :mod:`.evaluation` - ``make eval``;
* ``trained_aligner/`` - the trained aligner (a float16 LoRA adapter on SmolLM2-135M-Instruct):
  :func:`load_arithmetic_aligner` loads it offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["ARITHMETIC_ALIGNER", "load_arithmetic_aligner"]

#: The trained arithmetic aligner of this example (rebuilt by ``make aligner``).
ARITHMETIC_ALIGNER = Path(__file__).resolve().parent / "trained_aligner"


def load_arithmetic_aligner(
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    base_model: Any = None,
    **kwargs: Any,
) -> Any:
    """The trained arithmetic aligner (a LoRA adapter on SmolLM2-135M-Instruct), or the checkpoint at ``path``;
    offline. An adapter loads onto ``base_model`` when given (the upstream SmolLM2 itself: one copy of the weights,
    the model gets the adapter, switched off outside aligner calls), else onto a second copy of the embedded SmolLM2
    (converted once, see :func:`examples.smollm2.smollm2_checkpoint`); ``kwargs`` go to
    :meth:`StreamAligner.from_pretrained`.
    """
    from transformers_stream_aligner import StreamAligner

    from ..smollm2 import smollm2_checkpoint

    target = Path(path) if path is not None else ARITHMETIC_ALIGNER
    if not (target / "stream_aligner_config.json").is_file() and path is None:
        raise FileNotFoundError(f"the trained arithmetic aligner is missing from {target} (rebuild: make aligner)")
    kwargs.setdefault("local_files_only", True)
    if (target / "adapter_config.json").is_file():
        if base_model is not None:
            return StreamAligner.from_pretrained(target, base_model=base_model, **kwargs)
        kwargs.setdefault("base_model_name_or_path", smollm2_checkpoint(cache_dir))
    return StreamAligner.from_pretrained(target, **kwargs)
