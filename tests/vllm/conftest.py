"""vLLM servers (their own virtual environment, ``.venv-vllm``, built by ``make test-vllm``) on the embedded SmolLM2,
started on 127.0.0.1 and stopped by their process id: one for the session (with the shipped arithmetic aligner as a
LoRA module named ``aligner``, with one spare LoRA slot: ``--max-loras 2``, see
:func:`~transformers_stream_aligner.aligners.vllm.lora_slot_problem`), and one that the fault tests stop, pause and kill."""

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from ..helpers import free_port, running_server

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
ADAPTER = ROOT / "examples" / "arithmetic" / "trained_aligner"


def vllm_command(model_dir, port, *extra):
    return [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", "smol", "--dtype", "float32", "--enable-prefix-caching", "--max-model-len", "2048",
            "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip


def vllm_env():
    return dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1")


def requests_in_engine(base):
    """(running, waiting) requests of a vLLM server, from its Prometheus metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    values = []
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        found = re.findall(rf"^{name}\{{[^}}]*\}} ([0-9.e+-]+)$", text, flags=re.M)
        values.append(sum(float(v) for v in found))
    return tuple(values)


def wait_until_idle(base, timeout=15.0):
    """Poll the server until no request runs or waits (bounded); returns the last (running, waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = requests_in_engine(base)
        if counts == (0.0, 0.0) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


@pytest.fixture(scope="session")
def vllm_server(smollm2, tmp_path_factory):
    """(base url, served model name) of a vLLM server running SmolLM2-135M-Instruct in float32, with the shipped
    arithmetic aligner as the LoRA module ``aligner``."""
    if not VLLM_PYTHON.exists():
        pytest.fail(f"no vLLM environment at {VLLM_PYTHON}: run `make test-vllm`, which builds it")
    model, _ = smollm2
    port = free_port()
    command = vllm_command(model.name_or_path, port, "--enable-lora", "--max-lora-rank", "16", "--lora-modules",
                           f"aligner={ADAPTER}", "--max-loras", "2", "--enable-prompt-tokens-details")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    with running_server(command, health_url=f"{base}/health", log_path=log_path, env=vllm_env(), timeout=600):
        yield base, "smol"
