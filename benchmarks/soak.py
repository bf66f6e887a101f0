"""Soak: several threads share one SmolLM2, one tokenizer and one aligner for minutes of stream-aligned generation.

Two aligners, one after the other: the shipped arithmetic aligner (``examples/arithmetic``), and the same aligner
behind a *flaky* wrapper that raises ``ConnectionError`` on 5% of calls (chosen by a hash of the request, so a rerun
fails on the same calls). Each worker thread answers arithmetic questions from a fixed pool, round robin, until
the time is up; a monitor thread samples the process's resident memory. Then every question is answered once
more, alone and in order (the *sequential rerun*), and each concurrent result is compared with it: the tokens of
a finished answer, or the error kind and the partial output of a failed one. Reported per aligner: calls, errors
by kind, results that differ from the sequential rerun (must be 0) and RSS over time (must stay flat).

    python -m benchmarks.soak                       # 4 threads x 150 s per aligner (about 8 min on 2 cores)
    python -m benchmarks.soak --threads 2 --seconds 30 --questions 6     # a quick look

Results: ``benchmarks/results/soak.json`` (and a markdown table on stdout); docs/reliability.md quotes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    """The process's resident set size in MB (``/proc``; ``psutil`` elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class FlakyAligner:
    """Wraps an aligner; ``correct`` raises ``ConnectionError`` for about ``rate`` of its calls, decided by a hash of
    the requests (deterministic: the sequential rerun fails on the same calls)."""

    def __init__(self, inner: Any, rate: float = 0.05) -> None:
        self.inner, self.rate = inner, rate

    def correct(self, requests: list[Any]) -> list[str]:
        key = "\x00".join(f"{r.question}\x01{r.prefix}\x01{r.last}" for r in requests).encode("utf-8", "surrogatepass")
        if int.from_bytes(hashlib.sha256(key).digest()[:4], "big") < self.rate * 2**32:
            raise ConnectionError("injected aligner fault (5% of calls)")
        return self.inner.correct(requests)


def answer(model: Any, tok: Any, aligner: Any, question: str, max_new_tokens: int) -> dict[str, Any]:
    """One stream-aligned answer: its tokens, or the kind of error and the partial output it carries."""
    from transformers_stream_aligner import StreamAlignmentError, stream_aligned_generate

    inputs = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)  # fmt: skip
    try:
        out = stream_aligned_generate(model, inputs["input_ids"], attention_mask=inputs["attention_mask"], aligner=aligner,
                                      tokenizer=tok, aligner_question=question, max_new_tokens=max_new_tokens,
                                      do_sample=False, invalid_correction="keep_original")  # fmt: skip
        return {"ok": True, "tokens": out[0].tolist()}
    except StreamAlignmentError as err:
        cause = type(err.__cause__).__name__ if err.__cause__ is not None else type(err).__name__
        return {"ok": False, "error": cause, "tokens": err.sequences[0].tolist()}


def soak(model: Any, tok: Any, aligner: Any, questions: list[str], *, threads: int, seconds: float,
         max_new_tokens: int) -> dict[str, Any]:  # fmt: skip
    results: list[tuple[str, dict[str, Any]]] = []
    crashes: list[str] = []
    lock = threading.Lock()
    memory: list[tuple[float, float]] = []
    start = time.monotonic()
    stop = threading.Event()

    def worker(offset: int) -> None:
        i = offset
        while time.monotonic() - start < seconds:
            question = questions[i % len(questions)]
            i += threads
            try:
                result = answer(model, tok, aligner, question, max_new_tokens)
            except BaseException as err:  # noqa: BLE001 - anything but a StreamAlignmentError is a defect
                with lock:
                    crashes.append(f"{type(err).__name__}: {err}")
                continue
            with lock:
                results.append((question, result))

    def monitor() -> None:
        while not stop.is_set():
            memory.append((round(time.monotonic() - start, 1), round(rss_mb(), 1)))
            stop.wait(5.0)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - start
    stop.set()
    watcher.join()
    memory.append((round(elapsed, 1), round(rss_mb(), 1)))

    # the sequential rerun: each question once, alone (an aligner with a KV cache starts afresh, as a new process)
    if hasattr(getattr(aligner, "inner", aligner), "reset_cache"):
        getattr(aligner, "inner", aligner).reset_cache()
    reference = {q: answer(model, tok, aligner, q, max_new_tokens) for q in sorted({q for q, _ in results})}
    differing = [q for q, r in results if r != reference[q]]
    errors: dict[str, int] = {}
    for _, r in results:
        if not r["ok"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    half = [m for t, m in memory if t >= elapsed / 2]
    return {
        "threads": threads,
        "seconds": round(elapsed, 1),
        "calls": len(results) + len(crashes),
        "finished": sum(r["ok"] for _, r in results),
        "errors_by_kind": errors,
        "crashes": crashes[:10],
        "differ_from_sequential": len(differing),
        "differing_questions": differing[:10],
        "rss_mb": memory,
        "rss_first_mb": memory[0][1],
        "rss_second_half_min_mb": min(half),
        "rss_second_half_max_mb": max(half),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=150.0, help="per aligner")
    parser.add_argument("--questions", type=int, default=16, help="size of the question pool")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--json", default=str(HERE / "results" / "soak.json"))
    args = parser.parse_args()

    import torch

    from examples.arithmetic import load_arithmetic_aligner
    from examples.arithmetic.task import make_problems
    from examples.smollm2 import load_smollm2

    torch.manual_seed(0)
    model, tok = load_smollm2()
    shipped = load_arithmetic_aligner()
    questions = [p.question for p in make_problems(args.questions, seed=7, split="test")]
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "settings": vars(args),
        "runs": {},
    }
    for name, aligner in (("shipped", shipped), ("flaky 5%", FlakyAligner(shipped))):
        print(f"[soak] {name}: {args.threads} threads x {args.seconds:.0f} s ...", flush=True)
        report["runs"][name] = soak(model, tok, aligner, questions, threads=args.threads, seconds=args.seconds,
                                    max_new_tokens=args.max_new_tokens)  # fmt: skip
        run = report["runs"][name]
        print(f"[soak] {name}: {run['calls']} calls, errors {run['errors_by_kind']}, crashes {len(run['crashes'])}, "
              f"differ {run['differ_from_sequential']}, RSS {run['rss_first_mb']:.0f} -> "
              f"{run['rss_second_half_min_mb']:.0f}..{run['rss_second_half_max_mb']:.0f} MB", flush=True)  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print("\n| aligner | threads x s | calls | finished | errors by kind | crashes | differ from sequential | RSS MB "
          "(start; 2nd half min-max) |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name, run in report["runs"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(run["errors_by_kind"].items())) or "none"
        print(f"| {name} | {run['threads']} x {run['seconds']:.0f} | {run['calls']} | {run['finished']} | {kinds} | "
              f"{len(run['crashes'])} | {run['differ_from_sequential']} | {run['rss_first_mb']:.0f}; "
              f"{run['rss_second_half_min_mb']:.0f}-{run['rss_second_half_max_mb']:.0f} |")  # fmt: skip
    if any(run["differ_from_sequential"] or run["crashes"] for run in report["runs"].values()):
        raise SystemExit("soak: results differ from the sequential rerun, or calls crashed")


if __name__ == "__main__":
    main()
