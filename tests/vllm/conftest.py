"""A vLLM server (its own virtual environment, ``.venv-vllm``, built by ``make test-vllm``) on the embedded SmolLM2,
started on 127.0.0.1 for the session and stopped by its process id."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(smollm2, tmp_path_factory):
    """(base url, served model name) of a vLLM server running SmolLM2-135M-Instruct in float32."""
    import httpx

    if not VLLM_PYTHON.exists():
        pytest.fail(f"no vLLM environment at {VLLM_PYTHON}: run `make test-vllm`, which builds it")
    model, _ = smollm2
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", model.name_or_path,
               "--served-model-name", "smol", "--dtype", "float32", "--enable-prefix-caching", "--max-model-len", "2048",
               "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="2")
    log = open(log_path, "w")  # noqa: SIM115 - closed at teardown
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vLLM exited: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("vLLM did not become healthy within 600 s")
            time.sleep(1)
        yield base, "smol"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=60)
        log.close()
