"""A vLLM server (its own virtual environment, ``.venv-vllm``, built by ``make test-vllm``) on the embedded SmolLM2,
started on 127.0.0.1 for the session and stopped by its process id."""

import os
from pathlib import Path

import pytest

from ..helpers import free_port, running_server

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


@pytest.fixture(scope="session")
def vllm_server(smollm2, tmp_path_factory):
    """(base url, served model name) of a vLLM server running SmolLM2-135M-Instruct in float32."""
    if not VLLM_PYTHON.exists():
        pytest.fail(f"no vLLM environment at {VLLM_PYTHON}: run `make test-vllm`, which builds it")
    model, _ = smollm2
    port = free_port()
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", model.name_or_path,
               "--served-model-name", "smol", "--dtype", "float32", "--enable-prefix-caching", "--max-model-len", "2048",
               "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="2")
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    with running_server(command, health_url=f"{base}/health", log_path=log_path, env=env, timeout=600):
        yield base, "smol"
