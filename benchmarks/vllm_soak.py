"""Soak of the served path: ``stream-aligner serve`` over vLLM with the shipped aligner (a LoRA on the upstream's
engine) that fails 5% of its calls, under at least 32 concurrent streaming clients for at least 10 minutes, 5% of
them leaving mid-stream.

Everything runs on 127.0.0.1 and is stopped by its process id: a vLLM server (SmolLM2-135M-Instruct with the
aligner as the LoRA module ``aligner``, as :mod:`benchmarks.vllm_serving` starts it), then ``stream-aligner serve
--upstream-url ...`` whose aligner is :data:`flaky_lora_aligner` (the LoRA aligner behind :class:`FlakyCalls`:
``ConnectionError`` on 5% of its calls; every request of a failed call fails). Each client streams chat completions of
the questions of :mod:`benchmarks.vllm_serving` in turn (``max_tokens`` 64) until the time is up or it has sent
``--max-requests-per-client``; 5% of its requests (seeded) close the connection after their first piece of text.
A monitor samples the server's resident memory every 5 s; it counts as flat when it moves by less than 5% over
the last third of the run (the whole curve is in the results: docs/reliability.md shows it).

Then the checks: vLLM's ``/metrics`` must show 0 running and 0 waiting requests (every disconnect and failure ended
its engine requests); the server is restarted with the same aligner without faults and every question is asked
once, alone (the *sequential rerun*): each completed answer must equal its question's rerun, each failure must be
a ``stream_alignment_error`` event whose ``partial_text`` starts with the text the client had received, and nothing
else may happen (no HTTP error, no transport error, no stream without an end).

    python -m benchmarks.vllm_soak --seconds 900            # 32 clients x 15 min (about 19 min here)
    python -m benchmarks.vllm_soak                          # 32 clients x 10 min
    python -m benchmarks.vllm_soak --clients 4 --seconds 30   # a quick look

Results: ``benchmarks/results/vllm_soak.json`` and a summary on stdout; docs/reliability.md quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.vllm_serving import ADAPTER, QUESTIONS, ROOT, add_server_arguments, metric, vllm_server

#: the environment variable that tells :data:`flaky_lora_aligner` and :data:`lora_aligner` the vLLM server's URL
URL_ENV = "STREAM_ALIGNER_SOAK_VLLM_URL"


#: where :data:`flaky_lora_aligner` writes its counts of calls and injected faults (JSON, rewritten on each call)
COUNTS_ENV = "STREAM_ALIGNER_SOAK_COUNTS"


class FlakyCalls:
    """Wraps an aligner; each ``correct`` call raises ``ConnectionError`` with probability ``rate`` (a seeded
    generator: 5% of the calls, whichever requests they carry), and the counts go to the file ``$STREAM_ALIGNER_SOAK_COUNTS``."""

    def __init__(self, inner: Any, rate: float = 0.05, seed: int = 0) -> None:
        self.inner, self.rate = inner, rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.calls = self.faults = 0

    def correct(self, requests: list[Any]) -> list[str]:
        with self._lock:  # one writer at a time (the soak of 2026-12-06 lost one call to two writers' race)
            self.calls += 1
            fault = self._random.random() < self.rate
            self.faults += fault
            counts = {"calls": self.calls, "faults": self.faults}
            path = os.environ.get(COUNTS_ENV)
            if path:
                Path(path + ".tmp").write_text(json.dumps(counts))
                os.replace(path + ".tmp", path)
        if fault:
            raise ConnectionError(f"injected aligner fault (call {counts['calls']}; 5% of calls)")
        return self.inner.correct(requests)


def __getattr__(name: str) -> Any:
    """``flaky_lora_aligner`` and ``lora_aligner``: the aligners ``stream-aligner serve --aligner
    benchmarks.vllm_soak:NAME`` loads (the shipped aligner as the LoRA module ``aligner`` of the vLLM server at
    ``$STREAM_ALIGNER_SOAK_VLLM_URL``; the flaky one fails 5% of its calls: :class:`FlakyCalls`)."""
    if name not in ("flaky_lora_aligner", "lora_aligner"):
        raise AttributeError(name)
    from transformers_stream_aligner.aligners.vllm import VLLMAligner

    aligner = VLLMAligner.from_pretrained(ADAPTER, base_url=os.environ[URL_ENV], model="aligner", timeout=600)
    return FlakyCalls(aligner, rate=0.05) if name == "flaky_lora_aligner" else aligner


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def serve_command(args: Any, vllm_base: str, model_dir: str, port: int, aligner: str) -> list[str]:
    cli = str(Path(sys.executable).parent / "stream-aligner")
    return [cli, "serve", "--aligner", f"benchmarks.vllm_soak:{aligner}",
            "--upstream-url", vllm_base, "--upstream-model", "smol", "--tokenizer", model_dir, "--host", "127.0.0.1",
            "--port", str(port), "--overlap", str(args.overlap).lower(), "--aligner_in_flight", str(args.in_flight),
            "--max_concurrent_requests", str(args.clients + 8), "--upstream_timeout", "600"]  # fmt: skip


async def one_request(client: httpx.AsyncClient, question: str, max_tokens: int, leave: bool) -> dict:
    """Stream one chat completion; ``leave``: close the connection after the first piece of text."""
    body = {"model": "stream-aligned", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}  # fmt: skip
    text, error, finish, done = "", None, None, False
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return {"kind": "http_error", "status": response.status_code, "body": response.text[:300]}
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]
                    continue
                for choice in event.get("choices", []):
                    text += (choice.get("delta") or {}).get("content") or ""
                    finish = choice.get("finish_reason") or finish
                if leave and text:
                    return {"kind": "left", "text": text, "seconds": time.perf_counter() - start}
    except httpx.HTTPError as err:
        return {"kind": "transport_error", "error": f"{type(err).__name__}: {err}"}
    seconds = time.perf_counter() - start
    if error is not None and done:
        return {"kind": "failed", "text": text, "error": error, "seconds": seconds}
    if finish is not None and done:
        return {"kind": "completed", "text": text, "finish": finish, "seconds": seconds}
    return {"kind": "unended", "text": text, "error": error, "seconds": seconds}


async def clients(base: str, args: Any) -> list[dict]:
    deadline = time.monotonic() + args.seconds
    results: list[dict] = []
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:

        async def worker(index: int) -> None:
            rng = random.Random(index)
            for n in range(args.max_requests_per_client):
                if time.monotonic() >= deadline:
                    return
                question = QUESTIONS[(index + n) % len(QUESTIONS)]
                leave = rng.random() < args.leave_rate
                result = await one_request(client, question, args.max_tokens, leave)
                results.append({"client": index, "question": question, "leave": leave, **result})

        await asyncio.gather(*(worker(i) for i in range(args.clients)))
    return results


def engine_queue(vllm_base: str) -> tuple[float, float]:
    text = httpx.get(f"{vllm_base}/metrics", timeout=30).text
    return metric(text, "vllm:num_requests_running"), metric(text, "vllm:num_requests_waiting")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--max-requests-per-client", type=int, default=200, help="a bound on each client's loop")
    parser.add_argument("--leave-rate", type=float, default=0.05, help="share of requests that leave mid-stream")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--malloc-arena-max", type=int, default=None,
                        help="MALLOC_ARENA_MAX for stream-aligner serve (glibc's malloc arenas; default: glibc's own)")
    add_server_arguments(parser)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/vllm_soak.json"))
    args = parser.parse_args(argv)

    from examples.smollm2 import default_cache_dir, smollm2_checkpoint
    from tests.helpers import free_port, running_server

    model_dir = str(smollm2_checkpoint(str(default_cache_dir())))
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    with vllm_server(model_dir, args) as (vllm_base, _):
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path, **{URL_ENV: vllm_base})
        if args.malloc_arena_max is not None:
            env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
        counts_path = logs / f"vllm_soak_counts_{os.getpid()}.json"
        env[COUNTS_ENV] = str(counts_path)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = serve_command(args, vllm_base, model_dir, port, "flaky_lora_aligner")
        memory: list[tuple[float, float]] = []
        with running_server(command, health_url=f"{base}/health", log_path=logs / "vllm_soak_serve.log", env=env,
                            cwd=str(ROOT), timeout=300) as server:  # fmt: skip
            stop = threading.Event()
            start = time.monotonic()

            def monitor() -> None:
                while not stop.is_set():
                    value = rss_mb(server.pid)
                    if value is not None:
                        memory.append((round(time.monotonic() - start, 1), round(value, 1)))
                    stop.wait(5)

            sampler = threading.Thread(target=monitor, daemon=True)
            sampler.start()
            print(f"{args.clients} clients for {args.seconds:.0f} s against {base}", flush=True)
            results = asyncio.run(clients(base, args))
            elapsed = time.monotonic() - start
            stop.set()
            sampler.join()
            memory.append((round(time.monotonic() - start, 1), round(rss_mb(server.pid) or 0.0, 1)))
            queue = engine_queue(vllm_base)
            for _ in range(60):  # aborts reach the engine within a step or two
                if queue == (0.0, 0.0):
                    break
                time.sleep(0.5)
                queue = engine_queue(vllm_base)
        print("sequential rerun with the aligner without faults", flush=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = serve_command(args, vllm_base, model_dir, port, "lora_aligner")
        with running_server(command, health_url=f"{base}/health", log_path=logs / "vllm_soak_rerun.log", env=env,
                            cwd=str(ROOT), timeout=300):  # fmt: skip

            async def rerun() -> dict[str, dict]:
                async with httpx.AsyncClient(base_url=base, timeout=600) as client:
                    return {q: await one_request(client, q, args.max_tokens, False) for q in QUESTIONS}

            reference = asyncio.run(rerun())
    report = check(results, reference, memory, queue, elapsed, args)
    report["summary"]["aligner_calls_and_faults"] = json.loads(counts_path.read_text()) if counts_path.exists() else None
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    return 0 if report["summary"]["passed"] else 1


def check(results: list[dict], reference: dict[str, dict], memory: list, queue: tuple, elapsed: float, args: Any) -> dict:
    kinds: dict[str, int] = {}
    for r in results:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    completed = [r for r in results if r["kind"] == "completed"]
    differ = [r for r in completed if reference[r["question"]].get("text") != r["text"]]
    failed = [r for r in results if r["kind"] == "failed"]
    unclear = [r for r in failed if r["error"].get("type") != "stream_alignment_error"
               or not str(r["error"].get("partial_text", "")).startswith(r["text"]) or not r["error"].get("message")]  # fmt: skip
    aligner_faults = [r for r in failed if "injected aligner fault" in r["error"].get("message", "")]
    unexpected = [r for r in results if r["kind"] not in ("completed", "failed", "left")]
    end = memory[-1][0]
    first_minute = [m for t, m in memory if 30 <= t < 90] or [memory[0][1]]
    last_minute = [m for t, m in memory if t >= end - 60]
    last_third = [m for t, m in memory if t >= end * 2 / 3]  # flat: what the server holds once warm stays put
    growth = statistics.mean(last_minute) - statistics.mean(first_minute)
    late_growth = max(last_third) - min(last_third)
    references_complete = all(r.get("kind") == "completed" for r in reference.values())
    summary = {
        "clients": args.clients, "seconds": round(elapsed, 1), "requests": len(results), "outcomes": kinds,
        "completed_differ_from_rerun": len(differ), "failures_without_clear_error_and_partial_text": len(unclear),
        "failures_from_injected_aligner_faults": len(aligner_faults), "unexpected": len(unexpected),
        "left_mid_stream": kinds.get("left", 0), "vllm_running_waiting_at_end": list(queue),
        "server_rss_mb_first_minute": round(statistics.mean(first_minute), 1),
        "server_rss_mb_last_minute": round(statistics.mean(last_minute), 1), "server_rss_growth_mb": round(growth, 1),
        "server_rss_mb_last_third_min_max": [min(last_third), max(last_third)],
        "reruns_completed": references_complete,
        "completed_seconds_median": round(statistics.median(r["seconds"] for r in completed), 2) if completed else None,
    }  # fmt: skip
    summary["passed"] = bool(completed) and references_complete and not differ and not unclear and not unexpected and \
        queue == (0.0, 0.0) and late_growth < 0.05 * statistics.mean(last_third)  # fmt: skip
    return {"summary": summary, "settings": {**{k: v for k, v in vars(args).items()}},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
            "memory_mb": memory, "reference": reference, "differ": differ[:5], "unclear": unclear[:5],
            "unexpected": unexpected[:5], "results": results}  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
