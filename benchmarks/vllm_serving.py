"""Benchmark: stream alignment over a vLLM server, 1, 4 and 16 concurrent chat requests (SmolLM2-135M-Instruct,
float32 greedy, vLLM's CPU build on this machine).

Starts its own vLLM server on 127.0.0.1 (the ``.venv-vllm`` environment of ``make test-vllm``; the shipped arithmetic
aligner as the LoRA module ``aligner`` with a spare LoRA slot, prefix caching on, KV blocks of 32 tokens unless
``--server-args`` says otherwise) and stops it by its process id. In one run, same prompts (each run sends
``--requests`` requests, 8 by default and 16 at concurrency 16, with at most ``concurrency`` in flight):

* ``plain``: the prompts streamed straight from vLLM (no alignment);
* ``identity``: stream-aligned with an aligner that keeps every sentence;
* ``in-process``: the shipped aligner (LoRA on SmolLM2) in this process, batched across requests;
* ``lora``: the shipped aligner as a LoRA on the upstream's own vLLM engine (:class:`VLLMAligner`);

each aligned mode without and with ``overlap``. Every request runs its own sentence loop on asyncio
(:func:`astream_aligned_completion`); concurrent aligner calls share one :class:`BatchingAligner` (the LoRA
aligner's with ``--in-flight`` calls at once, 8 by default; the in-process one's one at a time).

Reported per mode and concurrency: throughput (generated tokens per second of wall time) and its ratio to plain at
the same concurrency, median time to the first corrected sentence (plain: to the first sentence end), and the
outputs' agreement with the non-overlap run. Separately, at concurrency 1, the prompt tokens vLLM recomputed for
each request after a splice (its prefix-cache counters) against the tokens that actually changed.

    python -m benchmarks.vllm_serving                     # everything (~15 min here)
    python -m benchmarks.vllm_serving --concurrency 1 4 --modes plain identity

Writes JSON (``benchmarks/results/vllm_serving.json``) and a plot (``docs/img/vllm_serving.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
ADAPTER = ROOT / "examples" / "arithmetic" / "trained_aligner"
QUESTIONS = [
    "What is 17*23? Explain briefly.",
    "Give me three tips for sleeping better.",
    "Why is the sky blue?",
    "Tom has 45 apples and gets 19 more. How many apples does he have?",
    "How do I boil an egg?",
    "What is 64 * 8?",
    "Name three uses of a paperclip.",
    "Mia has 58 marbles and gives away 37. How many are left?",
    "Explain what a prime number is.",
    "How can I save money on groceries?",
    "What is 125 + 378?",
    "Why do cats purr?",
    "A book costs 12 dollars. How much do 7 books cost?",
    "What causes the seasons on Earth?",
    "How many minutes are in 6 hours?",
    "Give two tips for staying focused while studying.",
]
MODES = ["plain", "identity", "identity+overlap", "in-process", "in-process+overlap", "lora", "lora+overlap"]


def identity(question: str, prefix: str, last: str) -> str:
    return last


def rewrite(question: str, prefix: str, last: str) -> str:
    return last if last.startswith("Indeed") else "Indeed, " + last


def metric(text: str, name: str, label: str = "") -> float:
    found = re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}} ([0-9.e+-]+)$", text, flags=re.M)
    return sum(float(v) for labels, v in found if label in labels)


# ---------------------------------------------------------------------------------------------- the runs
async def plain_request(client: httpx.AsyncClient, model: str, ids: list[int], max_tokens: int, tok: Any) -> dict:
    body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "return_token_ids": True, "skip_special_tokens": False}  # fmt: skip
    start = time.perf_counter()  # from the request's start (after waiting for a slot)
    tokens: list[int] = []
    first_sentence = None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            for choice in json.loads(line[5:])["choices"]:
                tokens.extend(choice.get("token_ids") or [])
            if first_sentence is None and re.search(r"[.!?]\s", tok.decode(tokens, skip_special_tokens=True)):
                first_sentence = time.perf_counter() - start
    return {"tokens": tokens, "first": first_sentence or time.perf_counter() - start}


async def aligned_request(upstream: Any, ids: list[int], max_tokens: int, tok: Any, aligner: Any, overlap: bool) -> dict:
    from transformers_stream_aligner.generation.completion import astream_aligned_completion

    first: list[float] = []

    class FirstRecord:
        per_row = True

        def put_alignment(self, record: Any) -> None:
            if not first:
                first.append(time.perf_counter() - start)

        def end_row(self, row: int) -> None: ...
        def put(self, value: Any) -> None: ...
        def end(self) -> None: ...

    start = time.perf_counter()
    out = await astream_aligned_completion(upstream, [ids], aligner=aligner, tokenizer=tok, max_new_tokens=max_tokens,
                                           streamer=FirstRecord(), return_dict=True, overlap=overlap)  # fmt: skip
    stats = out.alignment_stats
    return {"tokens": out.sequences[0, len(ids) :].tolist(), "first": first[0] if first else None,
            "stats": stats.to_dict()}  # fmt: skip


async def run_mode(mode: str, prompts: list[list[int]], concurrency: int, args: Any, env: dict) -> dict:
    from transformers_stream_aligner.aligners.batching import BatchingAligner

    tok, upstream = env["tok"], env["upstream"]
    count = max(args.requests, concurrency)
    selected = [prompts[i % len(prompts)] for i in range(count)]
    slots = asyncio.Semaphore(concurrency)  # `count` requests, at most `concurrency` at once

    async def limited(job: Any) -> dict:
        async with slots:
            return await job

    start = time.perf_counter()
    if mode == "plain":
        async with httpx.AsyncClient(base_url=upstream.base_url, timeout=600) as client:
            results = await asyncio.gather(*(limited(plain_request(client, upstream.model, p, args.max_tokens, tok))
                                             for p in selected))  # fmt: skip
        batching = None
    else:
        name, _, extra = mode.partition("+")
        in_flight = args.in_flight if name == "lora" else 1  # vLLM batches concurrent calls; a model in process not
        batching = BatchingAligner(env["aligners"][name], window=args.window, max_in_flight=in_flight)
        try:
            results = await asyncio.gather(*(limited(aligned_request(upstream, p, args.max_tokens, tok, batching,
                                                                     extra == "overlap")) for p in selected))  # fmt: skip
        finally:
            batching.close()
    wall = time.perf_counter() - start
    tokens = sum(len([t for t in r["tokens"] if t != tok.pad_token_id]) for r in results)
    firsts = [r["first"] for r in results if r["first"] is not None]
    row = {"mode": mode, "concurrency": concurrency, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
           "first_sentence_s_median": statistics.median(firsts) if firsts else None,
           "outputs": [r["tokens"] for r in results]}  # fmt: skip
    if batching is not None:
        row["aligner_calls"] = batching.stats.calls
        row["aligner_callers"] = batching.stats.callers
        row["largest_aligner_batch"] = batching.stats.largest_batch
        keys = ("sentences_aligned", "sentences_changed", "upstream_requests", "draft_tokens_kept", "draft_tokens_discarded")
        row["stats"] = {k: sum(r["stats"][k] for r in results) for k in keys}
    return row


def splice_recompute(env: dict, prompts: list[list[int]], args: Any) -> dict:
    """Concurrency 1: for each upstream request, the prompt tokens vLLM recomputed (prefix-cache queries - hits) and
    the tokens its row's previous request had not sent or received (what a splice changed)."""
    from transformers_stream_aligner.generation.completion import stream_aligned_completion
    from transformers_stream_aligner.runtime.engines import vllm_engine
    from transformers_stream_aligner.tokens import longest_common_prefix

    base = env["upstream"].base_url
    log: list[dict] = []
    original_open = vllm_engine.VLLMEngine._open

    def counters() -> tuple[float, float]:
        text = httpx.get(f"{base}/metrics", timeout=30).text
        return metric(text, "vllm:prefix_cache_queries_total"), metric(text, "vllm:prefix_cache_hits_total")

    def settle(entry: dict | None) -> None:
        if entry is not None:
            queries, hits = counters()
            entry["recomputed"] = (queries - entry.pop("queries0")) - (hits - entry.pop("hits0"))

    def measured_open(self: Any, row: Any) -> Any:
        settle(log[-1] if log and "queries0" in log[-1] else None)
        previous = self._sent.get(row.index, [])
        queries, hits = counters()
        log.append({"prompt": len(row.ids), "changed": len(row.ids) - longest_common_prefix(previous, row.ids),
                    "splice": bool(previous) and longest_common_prefix(previous, row.ids) < len(previous),
                    "queries0": queries, "hits0": hits})  # fmt: skip
        return original_open(self, row)

    results = {}
    vllm_engine.VLLMEngine._open = measured_open
    try:
        for name, aligner in (("rewrite", rewrite), ("in-process", env["aligners"]["in-process"])):
            log.clear()
            for ids in prompts[: args.splice_prompts]:
                stream_aligned_completion(env["upstream"], [ids], aligner=aligner, tokenizer=env["tok"],
                                          max_new_tokens=args.max_tokens)  # fmt: skip
                time.sleep(0.5)
                settle(log[-1] if log and "queries0" in log[-1] else None)
            splices = [e for e in log if e["splice"]]
            resubmits = [e for e in log if not e["splice"] and e["changed"] < e["prompt"]]
            results[name] = {
                "requests": len(log),
                "splices": len(splices),
                "splice_changed_mean": statistics.mean(e["changed"] for e in splices) if splices else None,
                "splice_recomputed_mean": statistics.mean(e["recomputed"] for e in splices) if splices else None,
                "splice_excess_max": max((e["recomputed"] - e["changed"] for e in splices), default=None),
                "resubmit_recomputed_max": max((e["recomputed"] for e in resubmits), default=None),
                "entries": log[:],
            }
    finally:
        vllm_engine.VLLMEngine._open = original_open
    return results


# ---------------------------------------------------------------------------------------------- the server
@contextlib.contextmanager
def vllm_server(model_dir: str, args: Any) -> Iterator[tuple[str, int | None]]:
    """A vLLM server of SmolLM2 on 127.0.0.1 with the shipped aligner as the LoRA module ``aligner`` (a spare LoRA
    slot: see :func:`~transformers_stream_aligner.aligners.vllm.lora_slot_problem`) and prefix caching, plus
    ``args.server_args`` (the levers: ``--block-size 32``, ``--speculative-config ...``). Yields its URL and KV block
    size; stops it by its process id."""
    import shlex

    from tests.helpers import free_port, running_server

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--served-model-name", "smol", "--dtype", "float32", "--enable-prefix-caching", "--max-model-len", "2048",
               "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), "--enable-lora", "--max-lora-rank", "16",
               "--lora-modules", f"aligner={ADAPTER}", "--max-loras", "2",  # a spare slot: see lora_slot_problem
               "--enable-prompt-tokens-details", *shlex.split(args.server_args)]  # fmt: skip
    server_env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="2")
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "vllm_serving_server.log"
    with running_server(command, health_url=f"{base}/health", log_path=log_path, env=server_env, timeout=900):
        info = re.search(r"vllm:cache_config_info\{([^}]*)\}", httpx.get(f"{base}/metrics", timeout=30).text)
        found = re.search(r'block_size="(\d+)"', info.group(1)) if info else None
        yield base, int(found.group(1)) if found else None


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server-args", default="--block-size 32",
                        help="more vLLM server flags (default: KV blocks of 32 tokens, the lever measured in docs/benchmarks.md)")
    parser.add_argument("--vllm-python", default=os.environ.get("VLLM_PYTHON", str(ROOT / ".venv-vllm/bin/python")))


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=8, help="requests per run (at least the concurrency)")
    parser.add_argument("--window", type=float, default=0.01, help="BatchingAligner collection window (s)")
    parser.add_argument("--in-flight", type=int, default=8,
                        help="aligner calls at once for the LoRA aligner (BatchingAligner max_in_flight; 1 = in turn)")
    parser.add_argument("--splice-prompts", type=int, default=6, help="0: skip the splice measurement")
    add_server_arguments(parser)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/vllm_serving.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs/img/vllm_serving.png"))
    args = parser.parse_args(argv)

    import torch

    from examples.smollm2 import default_cache_dir, smollm2_checkpoint
    from transformers_stream_aligner import StreamAligner
    from transformers_stream_aligner.aligners.vllm import VLLMAligner
    from transformers_stream_aligner.runtime.engines.vllm_engine import VLLMUpstream

    cache = str(default_cache_dir())
    model_dir = str(smollm2_checkpoint(cache))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"]) for q in QUESTIONS]  # fmt: skip
    rows: list[dict] = []
    with vllm_server(model_dir, args) as (base, block_size):
        upstream = VLLMUpstream(base, model="smol", timeout=600)
        aligners = {
            "identity": identity,
            "in-process": StreamAligner.from_pretrained(ADAPTER, base_model_name_or_path=model_dir, dtype=torch.float32),
            "lora": VLLMAligner.from_pretrained(ADAPTER, base_url=base, model="aligner", timeout=600),
        }
        env = {"tok": tok, "upstream": upstream, "aligners": aligners}
        asyncio.run(run_mode("plain", prompts, 2, args, env))  # warm-up (LoRA load, caches)
        asyncio.run(run_mode("lora", prompts, 2, args, env))
        for concurrency in args.concurrency:
            for mode in args.modes:
                row = asyncio.run(run_mode(mode, prompts, concurrency, args, env))
                rows.append(row)
                first = row["first_sentence_s_median"]
                print(f"{mode:>20} x{concurrency:<3} {row['tokens_per_s']:7.1f} tok/s  first sentence "
                      f"{first if first is None else round(first, 2)} s  wall {row['wall_s']:.1f} s", flush=True)  # fmt: skip
        splices = splice_recompute(env, prompts, args) if args.splice_prompts else {}
    by_key = {(r["mode"], r["concurrency"]): r for r in rows}
    for r in rows:
        plain = by_key.get(("plain", r["concurrency"]))
        r["ratio_to_plain"] = r["tokens_per_s"] / plain["tokens_per_s"] if plain else None
        base_mode = r["mode"].split("+")[0]
        reference = by_key.get((base_mode, r["concurrency"]))
        r["same_tokens_as_without_overlap"] = reference["outputs"] == r["outputs"] if reference else None
        if r["mode"].startswith("lora") and ("in-process", r["concurrency"]) in by_key:
            r["same_tokens_as_in_process"] = by_key[("in-process", r["concurrency"])]["outputs"] == r["outputs"]
        if r["mode"] in ("identity", "identity+overlap") and plain:
            r["same_tokens_as_plain"] = [o[: len(p)] for o, p in zip(r["outputs"], plain["outputs"], strict=True)] == plain["outputs"]
    for r in rows:
        del r["outputs"]
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "settings": {"max_tokens": args.max_tokens, "window_s": args.window, "questions": len(QUESTIONS),
                     "requests_per_run": args.requests, "in_flight": args.in_flight, "server_args": args.server_args,
                     "block_size": block_size},  # fmt: skip
        "rows": rows,
        "splices": splices,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print_table(result)
    plot(result, args.plot)
    return 0


def print_table(result: dict) -> None:
    print("\n| mode | concurrency | tok/s | × plain | first sentence (s) | same tokens |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        same = r.get("same_tokens_as_plain", r.get("same_tokens_as_without_overlap"))
        first = r["first_sentence_s_median"]
        print(f"| {r['mode']} | {r['concurrency']} | {r['tokens_per_s']:.1f} | {r['ratio_to_plain']:.2f} | "
              f"{'-' if first is None else f'{first:.2f}'} | {same} |")  # fmt: skip
    print(f"\nblock size {result['settings']['block_size']}")
    for name, s in result["splices"].items():
        print(f"{name}: {s['splices']} splices in {s['requests']} requests; changed {s['splice_changed_mean']} "
              f"recomputed {s['splice_recomputed_mean']} (max excess {s['splice_excess_max']}); resubmits recompute "
              f"at most {s['resubmit_recomputed_max']}")  # fmt: skip


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return
    rows = result["rows"]
    levels = sorted({r["concurrency"] for r in rows})
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        ratios = [next((r["ratio_to_plain"] for r in rows if r["mode"] == mode and r["concurrency"] == c), 0) for c in levels]
        firsts = [next((r["first_sentence_s_median"] or 0 for r in rows if r["mode"] == mode and r["concurrency"] == c), 0)
                  for c in levels]  # fmt: skip
        xs = [j + i * width for j in range(len(levels))]
        left.bar(xs, ratios, width, label=mode)
        right.bar(xs, firsts, width, label=mode)
    for axis, title in ((left, "throughput / plain vLLM"), (right, "median time to first (corrected) sentence, s")):
        axis.set_xticks([j + 0.4 - width / 2 for j in range(len(levels))], [f"{c} concurrent" for c in levels])
        axis.set_title(title)
    left.axhline(0.8, color="gray", linestyle="--", linewidth=1)
    left.legend(fontsize=7)
    fig.suptitle("Stream alignment over vLLM (SmolLM2-135M-Instruct, CPU, 2 cores)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
