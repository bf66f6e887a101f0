"""Profile: where the time of a corrected sentence goes when stream alignment runs over vLLM (SmolLM2-135M-Instruct,
float32 greedy, the shipped calculator aligner; vLLM's CPU build).

Starts the same vLLM server as :mod:`benchmarks.vllm_serving` (``--server-args`` adds levers) and answers its 16
questions with the aligner as a LoRA on the upstream's engine (``lora``) and in this process (``in-process``):

* **one request at a time, no overlap**: every event is timed on its own. Per *corrected sentence* (a sentence the
  edit rule sends to the aligner model): the upstream round that wrote it (time to its first token: HTTP, queue and
  prefill; then decode), the aligner call split by vLLM's own histograms (queue, prefill, decode: ``/metrics``
  deltas around the call; in process: the first forward of the call, and the others) and what the client adds
  (HTTP and Python: the call's wall time minus vLLM's end-to-end latency); per answer, the loop's Python (its wall
  time minus its rounds and aligner calls).
* **16 at once** (as configured: ``--overlap``, ``--in-flight``): the aligner calls' wall times, how many ran at
  once, and the engine's work: tokens the aligner's requests added to the upstream's (prompt and generated, from
  vLLM's counters and the aligner's responses), which bounds the throughput two shared cores can give.

    python -m benchmarks.vllm_profile                               # ~6 min here
    python -m benchmarks.vllm_profile --server-args "--block-size 32"

Writes JSON (``benchmarks/results/vllm_profile.json``) and prints a table; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.vllm_serving import ADAPTER, QUESTIONS, ROOT, add_server_arguments, metric, vllm_server

HISTOGRAMS = {"queue": "vllm:request_queue_time_seconds_sum", "prefill": "vllm:request_prefill_time_seconds_sum",
              "decode": "vllm:request_decode_time_seconds_sum", "e2e": "vllm:e2e_request_latency_seconds_sum"}  # fmt: skip
COUNTERS = {"prompt_tokens": "vllm:prompt_tokens_total", "generation_tokens": "vllm:generation_tokens_total"}


def engine_metrics(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return {key: metric(text, name) for key, name in {**HISTOGRAMS, **COUNTERS}.items()}


class Recorder:
    """Times the loop's events by wrapping the vLLM engine's row rounds and the aligner's model calls (class
    attributes patched for the recorder's lifetime; restored on exit)."""

    def __init__(self, base: str, aligner: Any, *, engine_split: bool) -> None:
        self.base, self.aligner, self.engine_split = base, aligner, engine_split
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def __enter__(self) -> Recorder:
        from transformers_stream_aligner.runtime.engines import vllm_engine

        self._engine = vllm_engine.VLLMEngine
        self._continue = self._engine._continue
        recorder = self

        def timed_continue(engine: Any, row: Any) -> Any:
            start = time.perf_counter()
            outcome = recorder._continue(engine, row)
            recorder.add({"kind": "round", "row_prompt": len(row.ids), "tokens": len(outcome.tokens),
                          "wall": time.perf_counter() - start})  # fmt: skip
            return outcome

        self._engine._continue = timed_continue
        if hasattr(self.aligner, "_complete"):  # VLLMAligner: the model's calls
            self._model_call, owner, name = self.aligner._complete, self.aligner, "_complete"
        elif hasattr(self.aligner, "_correct_batch"):  # StreamAligner: the model's calls and their forwards
            self._model_call, owner, name = self.aligner._correct_batch, self.aligner, "_correct_batch"
            self._hook_forwards()
        else:  # a function (the identity): no model
            self._owner = None
            return self
        self._owner, self._name = owner, name

        def timed_model_call(requests: list[Any], *rest: Any, **kwargs: Any) -> Any:
            with recorder.lock:
                recorder.in_flight += 1
                recorder.most_in_flight = max(recorder.most_in_flight, recorder.in_flight)
            before = engine_metrics(recorder.base) if recorder.engine_split else None
            if hasattr(recorder, "_forwards"):
                recorder._forwards.clear()
            start = time.perf_counter()
            try:
                return recorder._model_call(requests, *rest, **kwargs)
            finally:
                wall = time.perf_counter() - start
                with recorder.lock:
                    recorder.in_flight -= 1
                event = {"kind": "aligner", "prompts": len(requests), "wall": wall,
                         "sentence_chars": sum(len(r.last) for r in requests)}  # fmt: skip
                if before is not None:
                    time.sleep(0.2)  # vLLM records a request's histograms as it finishes
                    after = engine_metrics(recorder.base)
                    event.update({key: after[key] - before[key] for key in after})
                if getattr(recorder, "_forwards", None):
                    event["prefill"] = recorder._forwards[0]
                    event["decode"] = sum(recorder._forwards[1:])
                    event["forwards"] = len(recorder._forwards)
                recorder.add(event)

        setattr(owner, name, timed_model_call)
        return self

    def _hook_forwards(self) -> None:
        """In process: time each forward of the aligner's model (the first of a call is its prefill)."""
        self._forwards: list[float] = []
        model = self.aligner.model
        starts: list[float] = []

        def pre(module: Any, args: Any, kwargs: Any) -> None:
            starts.append(time.perf_counter())

        def post(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            self._forwards.append(time.perf_counter() - starts.pop())

        self._handles = [model.register_forward_pre_hook(pre, with_kwargs=True),
                         model.register_forward_hook(post, with_kwargs=True)]  # fmt: skip

    def __exit__(self, *exc: Any) -> None:
        self._engine._continue = self._continue
        if self._owner is not None and self._owner.__dict__.get(self._name) is not None:
            delattr(self._owner, self._name)
        for handle in getattr(self, "_handles", []):
            handle.remove()

    def add(self, event: dict) -> None:
        with self.lock:
            event["t"] = time.perf_counter()
            self.events.append(event)


def sequential(env: dict, name: str, max_tokens: int) -> dict:
    """One request at a time, no overlap: per corrected sentence and per answer (see the module docstring)."""
    from transformers_stream_aligner.generation.completion import stream_aligned_completion

    aligner = env["aligners"][name]
    answers: list[dict] = []
    sentences: list[dict] = []
    with Recorder(env["base"], aligner, engine_split=name == "lora") as recorder:
        for ids in env["prompts"]:
            recorder.events.clear()
            start = time.perf_counter()
            out = stream_aligned_completion(env["upstream"], [ids], aligner=aligner, tokenizer=env["tok"],
                                            max_new_tokens=max_tokens, return_dict=True)  # fmt: skip
            wall = time.perf_counter() - start
            events = list(recorder.events)
            rounds = [e for e in events if e["kind"] == "round"]
            calls = [e for e in events if e["kind"] == "aligner"]
            waits = 0.2 * len(calls) if name == "lora" else 0.0  # the metric read's pause, not the loop's time
            answers.append({"wall": wall - waits, "rounds": sum(e["wall"] for e in rounds),
                            "aligner": sum(e["wall"] for e in calls), "model_calls": len(calls),
                            "sentences": out.alignment_stats.sentences_aligned,
                            "tokens": int((out.sequences[0, len(ids):] != env["tok"].pad_token_id).sum())})  # fmt: skip
            answers[-1]["python"] = answers[-1]["wall"] - answers[-1]["rounds"] - answers[-1]["aligner"]
            for i, event in enumerate(events):  # a model call follows the round that wrote its sentence
                if event["kind"] == "aligner":
                    round_ = next((e for e in reversed(events[:i]) if e["kind"] == "round"), None)
                    sentences.append({"upstream_round": round_["wall"] if round_ else None,
                                      "upstream_tokens": round_["tokens"] if round_ else None, **event})  # fmt: skip
    return {"answers": answers, "corrected_sentences": sentences}


def concurrent(env: dict, name: str, max_tokens: int, concurrency: int, overlap: bool, in_flight: int) -> dict:
    """``concurrency`` requests at once: the aligner calls and the engine's work."""
    from benchmarks.vllm_serving import aligned_request
    from transformers_stream_aligner.aligners.batching import BatchingAligner

    aligner = env["aligners"][name]
    before = engine_metrics(env["base"])
    with Recorder(env["base"], aligner, engine_split=False) as recorder:
        batching = BatchingAligner(aligner, window=0.01, max_in_flight=in_flight if name == "lora" else 1)

        async def run_all() -> list[dict]:
            return await asyncio.gather(*(aligned_request(env["upstream"], ids, max_tokens, env["tok"], batching, overlap)
                                          for ids in env["prompts"][:concurrency]))  # fmt: skip

        start = time.perf_counter()
        try:
            results = asyncio.run(run_all())
        finally:
            batching.close()
        wall = time.perf_counter() - start
        events = list(recorder.events)
    after = engine_metrics(env["base"])
    calls = [e for e in events if e["kind"] == "aligner"]
    rounds = [e for e in events if e["kind"] == "round"]
    tokens = sum(len([t for t in r["tokens"] if t != env["tok"].pad_token_id]) for r in results)
    engine = {key: after[key] - before[key] for key in COUNTERS}
    return {"wall": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "model_calls": len(calls),
            "prompts_per_call_max": max((e["prompts"] for e in calls), default=0),
            "aligner_call_wall_median": statistics.median(e["wall"] for e in calls) if calls else None,
            "aligner_call_wall_max": max((e["wall"] for e in calls), default=None),
            "aligner_wall_sum": sum(e["wall"] for e in calls), "most_calls_at_once": recorder.most_in_flight,
            "rounds": len(rounds), "upstream_round_wall_sum": sum(e["wall"] for e in rounds),
            "first_corrected_median": statistics.median(r["first"] for r in results if r["first"] is not None),
            "engine_tokens": engine}


def beside(env: dict, max_tokens: int, concurrency: int) -> dict:
    """The engine's cost of an aligner request in its batch: ``concurrency`` plain streams alone, then beside one
    request that keeps decoding a long completion as the LoRA aligner, then as the base model (the control: the same
    extra row without the LoRA). The plain streams' tokens per second say what a LoRA row costs every step it is in."""
    from benchmarks.vllm_serving import plain_request

    prompts = env["prompts"][:concurrency]
    filler = env["aligners"]["lora"].config.encode_prompt(env["tok"], question=QUESTIONS[0], prefix="",
                                                          last="So, 17 * 23 = 381, and 381 + 10 = 391.")  # fmt: skip

    async def streams(extra_model: str | None) -> float:
        async with httpx.AsyncClient(base_url=env["base"], timeout=600) as client:
            stop = asyncio.Event()

            async def extra() -> None:
                body = {"model": extra_model, "prompt": filler, "max_tokens": 256, "temperature": 0, "ignore_eos": True}
                while not stop.is_set():
                    await client.post("/v1/completions", json=body)

            runner = asyncio.create_task(extra()) if extra_model else None
            await asyncio.sleep(0.5 if extra_model else 0)
            start = time.perf_counter()
            results = await asyncio.gather(*(plain_request(client, "smol", ids, max_tokens, env["tok"]) for ids in prompts))
            wall = time.perf_counter() - start
            stop.set()
            if runner is not None:
                await runner
            return sum(len(r["tokens"]) for r in results) / wall

    out = {"alone": asyncio.run(streams(None)), "beside_lora_row": asyncio.run(streams("aligner")),
           "beside_base_row": asyncio.run(streams("smol"))}  # fmt: skip
    out["lora_row_ratio"] = out["beside_lora_row"] / out["alone"]
    out["base_row_ratio"] = out["beside_base_row"] / out["alone"]
    return out


def _mean(events: list[dict], key: str) -> float | None:
    values = [e[key] for e in events if e.get(key) is not None]
    return statistics.mean(values) if values else None


def summarize(runs: dict) -> dict:
    out: dict[str, Any] = {}
    for name, run in runs.items():
        seq = run["sequential"]
        s = seq["corrected_sentences"]

        def mean(key: str, s: list[dict] = s) -> float | None:
            return _mean(s, key)
        answers = seq["answers"]
        row = {"corrected_sentences": len(s), "sentences": sum(a["sentences"] for a in answers),
               "upstream_round_s": mean("upstream_round"), "upstream_tokens": mean("upstream_tokens"),
               "aligner_wall_s": mean("wall"), "aligner_prefill_s": mean("prefill"), "aligner_decode_s": mean("decode"),
               "aligner_queue_s": mean("queue"), "aligner_generated_tokens": mean("generation_tokens"),
               "aligner_prompt_tokens": mean("prompt_tokens"),
               "answer_wall_s": statistics.mean(a["wall"] for a in answers),
               "answer_rounds_s": statistics.mean(a["rounds"] for a in answers),
               "answer_aligner_s": statistics.mean(a["aligner"] for a in answers),
               "answer_python_s": statistics.mean(a["python"] for a in answers)}  # fmt: skip
        if s and s[0].get("e2e") is not None:
            row["aligner_http_client_s"] = statistics.mean(e["wall"] - e["e2e"] for e in s)
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aligners", nargs="+", default=["lora", "in-process"], choices=["lora", "in-process"])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    add_server_arguments(parser)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/vllm_profile.json"))
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from examples.smollm2 import default_cache_dir, smollm2_checkpoint
    from transformers_stream_aligner import StreamAligner
    from transformers_stream_aligner.aligners.vllm import VLLMAligner
    from transformers_stream_aligner.runtime.engines.vllm_engine import VLLMUpstream

    model_dir = str(smollm2_checkpoint(str(default_cache_dir())))
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"]) for q in QUESTIONS]  # fmt: skip
    runs: dict[str, dict] = {}
    with vllm_server(model_dir, args) as (base, block_size):
        lora = VLLMAligner.from_pretrained(ADAPTER, base_url=base, model="aligner", timeout=600)
        env = {"base": base, "tok": tok, "prompts": prompts, "upstream": VLLMUpstream(base, model="smol", timeout=600),
               "aligners": {"lora": lora, "in-process": StreamAligner.from_pretrained(
                   ADAPTER, base_model_name_or_path=model_dir, dtype=torch.float32)}}  # fmt: skip
        sequential(env, "lora", 16)  # warm-up (the LoRA's first load, caches)
        # the identity aligner at the same concurrency: the upstream's own engine work (what the aligners add to it
        # is their run's counters minus this run's)
        plain = concurrent(env | {"aligners": {"identity": lambda q, p, last: last}}, "identity", args.max_tokens,
                           args.concurrency, args.overlap, 1)  # fmt: skip
        plain_engine = dict(plain["engine_tokens"])
        print("plain streams beside one aligner row", flush=True)
        step_cost = beside(env, args.max_tokens, args.concurrency)
        for name in args.aligners:
            print(f"{name}: one request at a time", flush=True)
            runs[name] = {"sequential": sequential(env, name, args.max_tokens)}
            print(f"{name}: {args.concurrency} at once", flush=True)
            runs[name]["concurrent"] = concurrent(env, name, args.max_tokens, args.concurrency, args.overlap,
                                                  args.in_flight)  # fmt: skip
            c = runs[name]["concurrent"]
            c["aligner_engine_tokens"] = {key: c["engine_tokens"][key] - plain_engine[key] for key in plain_engine}
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
              "settings": {"max_tokens": args.max_tokens, "concurrency": args.concurrency, "overlap": args.overlap,
                           "in_flight": args.in_flight, "server_args": args.server_args, "block_size": block_size},
              "identity_concurrent": plain, "beside": step_cost, "summary": summarize(runs), "runs": runs}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print_profile(result)
    return 0


def print_profile(result: dict) -> None:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    print("\nOne request at a time, per corrected sentence (means, seconds):")
    print("| aligner | corrected / sentences | upstream round (tokens) | aligner call | queue | prefill | decode "
          "(tokens) | HTTP + client | answer: wall, rounds, aligner, Python |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in result["summary"].items():
        print(f"| {name} | {s['corrected_sentences']} / {s['sentences']} | {f(s['upstream_round_s'])} "
              f"({f(s['upstream_tokens'])}) | {f(s['aligner_wall_s'])} | {f(s['aligner_queue_s'])} | "
              f"{f(s['aligner_prefill_s'])} | {f(s['aligner_decode_s'])} ({f(s['aligner_generated_tokens'])}) | "
              f"{f(s.get('aligner_http_client_s'))} | {f(s['answer_wall_s'])}, {f(s['answer_rounds_s'])}, "
              f"{f(s['answer_aligner_s'])}, {f(s['answer_python_s'])} |")  # fmt: skip
    b = result["beside"]
    print(f"\n{result['settings']['concurrency']} plain streams: {b['alone']:.1f} tok/s alone, "
          f"{b['beside_lora_row']:.1f} beside one LoRA aligner row ({b['lora_row_ratio']:.2f}x), "
          f"{b['beside_base_row']:.1f} beside one base-model row ({b['base_row_ratio']:.2f}x)")  # fmt: skip
    print(f"\n{result['settings']['concurrency']} at once (overlap {result['settings']['overlap']}):")
    print("| aligner | tok/s | wall | model calls | call wall median / max | calls at once | first corrected | "
          "engine tokens added by the aligner (prompt, generated) |")
    print("|---|---|---|---|---|---|---|---|")
    plain = result["identity_concurrent"]
    print(f"| identity | {plain['tokens_per_s']:.1f} | {plain['wall']:.1f} | - | - | - | "
          f"{plain['first_corrected_median']:.2f} | - |")  # fmt: skip
    for name, run in result["runs"].items():
        c = run["concurrent"]
        added = c["aligner_engine_tokens"]
        print(f"| {name} | {c['tokens_per_s']:.1f} | {c['wall']:.1f} | {c['model_calls']} | "
              f"{f(c['aligner_call_wall_median'])} / {f(c['aligner_call_wall_max'])} | {c['most_calls_at_once']} | "
              f"{f(c['first_corrected_median'])} | {added['prompt_tokens']:.0f}, {added['generation_tokens']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
