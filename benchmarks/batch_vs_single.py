"""Benchmark: one batch of 8 prompts against the same 8 prompts one at a time (SmolLM2-135M-Instruct, CPU).

Same prompts, same aligner, same settings, in one run; repetitions are interleaved (batch, singles,
batch, singles, ...) so that the machine's noise hits both alike, and medians are reported. Peak
memory is measured in a fresh child process per mode, after a warm-up: the resident memory sampled
during the run minus the resident memory at its start; the KV cache's own peak is computed from the
widest layout the run reached.

    python -m benchmarks.batch_vs_single                 # plain generate and every aligner, 3 repetitions
    python -m benchmarks.batch_vs_single --aligner trained --repeats 1
    python -m benchmarks.batch_vs_single --aligner identity --repeats 1 --max-new-tokens 64

Prints a markdown table and writes JSON (``--json``, default ``benchmarks/results/batch_vs_single.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

QUESTIONS = [
    "What is 17*23?",
    "Give two tips for staying focused while studying.",
    "Why is the sky blue?",
    "How do I boil an egg?",
    "What causes the seasons on Earth?",
    "Name three uses of a paperclip.",
    "Explain what a prime number is.",
    "How can I save money on groceries?",
]
UNTRAINED_SYSTEM_PROMPT = (
    "You correct one sentence of an answer. Reply with the corrected last sentence only, nothing else. "
    "If it is already correct, repeat it unchanged."
)


ALIGNERS = ("plain", "identity", "smollm2", "trained-any", "trained")
# ``plain`` is no aligner at all: the stock ``generate`` batched and one prompt at a time, the upstream's own
# batching ceiling on this machine, measured in the same run as the aligners.


def identity(question: str, prefix: str, last: str) -> str:
    return last


class TimedAligner:
    """Wraps an aligner and adds up the seconds spent inside its ``correct`` calls."""

    def __init__(self, aligner: Any) -> None:
        from transformers_stream_aligner import as_correction_fn

        self.fn = as_correction_fn(aligner)
        self.seconds = 0.0

    def correct(self, requests: list[Any]) -> list[str]:
        t0 = time.perf_counter()
        try:
            return self.fn(requests)
        finally:
            self.seconds += time.perf_counter() - t0


class PeakRSS:
    """Samples the process's resident memory (``/proc/self/status``) every 5 ms in a thread: peak - start."""

    def __init__(self, enabled: bool = True) -> None:
        import threading

        self.enabled = enabled
        self.start = self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.read())

    def __enter__(self) -> PeakRSS:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, self.read())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def kv_cache_mib(model: Any, slots: int, columns: int) -> float:
    """Bytes of a KV cache of ``slots`` rows × ``columns`` positions for ``model`` (float32)."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * slots * c.num_key_value_heads * head_dim * columns * 4 / 2**20


def load(cache_dir: str | None) -> tuple[Any, Any]:
    from examples.smollm2 import load_smollm2
    from transformers_stream_aligner import enable_stream_alignment

    model, tok = load_smollm2(cache_dir)
    tok.padding_side = "left"
    enable_stream_alignment(model, tok)
    return model, tok


def make_aligner(name: str, model: Any, tok: Any) -> Any:
    """``plain``: no aligner (``None``: the stock ``generate``); ``identity``; ``smollm2``: the untrained stand-in (SmolLM2 with the reference prompt, rewrites most
    sentences); ``trained``: the shipped arithmetic aligner, one copy (its adapter on the upstream itself; **mutates**
    ``model``, so it comes last); ``trained-any``: the same aligner without its edit rule (``edits="any"``: every
    sentence goes to the model, as shipped on 2026-12-01; it shares the adapter)."""
    if name == "plain":
        return None
    if name == "identity":
        return identity
    import copy
    import dataclasses

    from transformers_stream_aligner import StreamAligner, StreamAlignerConfig

    if name in ("trained", "trained-any"):
        from examples.arithmetic import load_arithmetic_aligner

        if name not in _TRAINED:
            _TRAINED.setdefault("trained", load_arithmetic_aligner(base_model=model))
            shared = copy.copy(_TRAINED["trained"])  # same model, adapter and decoder; its own config
            shared.config = dataclasses.replace(shared.config, edits="any")
            _TRAINED["trained-any"] = shared
        return _TRAINED[name]

    # SmolLM2 itself as an (untrained) model aligner with the reference prompt, as in `make demo`.
    config = StreamAlignerConfig(max_correction_tokens=64, system_prompt=UNTRAINED_SYSTEM_PROMPT)
    return StreamAligner(model, tok, config)


_TRAINED: dict[str, Any] = {}


def decoding_work(aligner: Any, before: dict[str, int] | None) -> dict[str, int] | None:
    """The aligner decoder's counters now (``before=None``) or since ``before``."""
    stats = getattr(aligner, "decoding_stats", None)
    if stats is None:
        return None
    now = {k: v for k, v in stats.to_dict().items() if not k.endswith("_last_call")}
    return now if before is None else {k: v - before.get(k, 0) for k, v in now.items()}


def encode(tok: Any, questions: list[str]) -> dict[str, torch.Tensor]:
    chats = [[{"role": "user", "content": q}] for q in questions]
    return tok.apply_chat_template(chats, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True)


def generated_rows(traces: list[list[Any]]) -> list[list[int]]:
    """Each row's generated tokens, as its records tile them (no padding)."""
    return [[t for r in trace for t in r.corrected_ids] for trace in traces]


# The sampling thread would take CPU from the timed runs on a 2-core machine: only memory children sample.
SAMPLE_MEMORY = False


def run_plain(model: Any, tok: Any, questions: list[str], max_new_tokens: int, batched: bool) -> dict[str, Any]:
    """The stock ``generate`` without an aligner: all ``questions`` in one batch, or one at a time."""
    from transformers_stream_aligner.tokens import token_id_list

    eos = set(token_id_list(model.generation_config.eos_token_id))
    rows: list[list[int]] = []
    t0 = time.perf_counter()
    for group in [questions] if batched else [[q] for q in questions]:
        inputs = encode(tok, group)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        width = inputs["input_ids"].shape[1]
        for seq in out[:, width:].tolist():  # up to and with the first EOS (a finished row is padded after it)
            end = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
            rows.append(seq[:end])
    seconds = time.perf_counter() - t0
    stats = {"upstream_slots": 0, "upstream_real_tokens": 0, "aligner_calls": 0, "peak_cache_columns": 0}
    return {"seconds": seconds, "aligner_seconds": 0.0, "rows": rows, "stats": stats, "aligner_work": None,
            "peak_rss_over_start_mib": float("nan"), "kv_cache_peak_mib": float("nan")}


def run_batch(model: Any, tok: Any, aligner: Any, questions: list[str], max_new_tokens: int,
              completed_rows: str = "draft") -> dict[str, Any]:
    if aligner is None:
        return run_plain(model, tok, questions, max_new_tokens, batched=True)
    inputs = encode(tok, questions)
    timed = TimedAligner(aligner)
    work = decoding_work(aligner, None)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), PeakRSS(SAMPLE_MEMORY) as rss:
        warnings.simplefilter("ignore")
        out = model.generate(**inputs, aligner=timed, aligner_question=questions, max_new_tokens=max_new_tokens,
                             do_sample=False, return_dict_in_generate=True, invalid_correction="keep_original",
                             max_correction_tokens=64, completed_rows=completed_rows)
    seconds = time.perf_counter() - t0
    rows = generated_rows(out.alignment_trace)
    stats = out.alignment_stats.to_dict()
    return {"seconds": seconds, "aligner_seconds": timed.seconds, "rows": rows, "stats": stats,
            "aligner_work": decoding_work(aligner, work) if work is not None else None, "peak_rss_over_start_mib": rss.mib,
            "kv_cache_peak_mib": kv_cache_mib(model, len(questions), stats["peak_cache_columns"])}


def run_singles(model: Any, tok: Any, aligner: Any, questions: list[str], max_new_tokens: int) -> dict[str, Any]:
    if aligner is None:
        return run_plain(model, tok, questions, max_new_tokens, batched=False)
    rows, stats = [], []
    timed = TimedAligner(aligner)
    work = decoding_work(aligner, None)
    t0 = time.perf_counter()
    rss = PeakRSS(SAMPLE_MEMORY).__enter__()
    for q in questions:
        inputs = encode(tok, [q])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(**inputs, aligner=timed, aligner_question=q, max_new_tokens=max_new_tokens,
                                 do_sample=False, return_dict_in_generate=True, invalid_correction="keep_original",
                                 max_correction_tokens=64)
        rows += generated_rows(out.alignment_trace)
        stats.append(out.alignment_stats.to_dict())
    seconds = time.perf_counter() - t0
    rss.__exit__()
    summed = {k: sum(s[k] for s in stats) for k in ("rounds", "aligner_calls", "sentences_aligned", "sentences_changed",
                                                     "upstream_columns", "upstream_slots", "upstream_real_tokens")}
    summed["peak_cache_columns"] = max(s["peak_cache_columns"] for s in stats)
    return {"seconds": seconds, "aligner_seconds": timed.seconds, "rows": rows, "stats": summed,
            "aligner_work": decoding_work(aligner, work) if work is not None else None, "peak_rss_over_start_mib": rss.mib, "kv_cache_peak_mib": kv_cache_mib(model, 1, summed["peak_cache_columns"])}


def child(args: argparse.Namespace) -> None:
    """Run one mode once in this fresh process and print its memory use as JSON."""
    global SAMPLE_MEMORY
    model, tok = load(args.cache_dir)
    aligner = make_aligner(args.aligner[0], model, tok)
    # Warm up first: the weights are memory-mapped and only count as resident once a forward touched them.
    run_batch(model, tok, aligner, QUESTIONS[:2], 8)
    SAMPLE_MEMORY = True
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    questions = QUESTIONS[: args.batch_size]
    if args.child == "singles":
        result = run_singles(model, tok, aligner, questions, args.max_new_tokens)
    else:
        result = run_batch(model, tok, aligner, questions, args.max_new_tokens, args.child.split("-")[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss_after_load_mib": base / 1024, "peak_rss_mib": peak / 1024,
                      "peak_during_run_over_start_mib": result["peak_rss_over_start_mib"],
                      "seconds": result["seconds"]}))


def memory(args: argparse.Namespace, aligner: str, mode: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", mode, "--aligner", aligner, "--batch-size", str(args.batch_size),
           "--max-new-tokens", str(args.max_new_tokens)]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aligner", nargs="+", default=list(ALIGNERS),
                        choices=ALIGNERS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the child processes that measure memory")
    parser.add_argument("--cache-dir", default=os.environ.get("STREAM_ALIGNER_CACHE"))
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "batch_vs_single.json"))
    parser.add_argument("--child", choices=["batch-draft", "batch-hold", "singles"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.batch_size > len(QUESTIONS):
        parser.error(f"--batch-size is at most {len(QUESTIONS)}")

    questions = QUESTIONS[: args.batch_size]
    model, tok = load(args.cache_dir)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "settings": {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                     "model": "SmolLM2-135M-Instruct float32", "greedy": True},
        "results": {},
    }
    for name in sorted(set(args.aligner), key=ALIGNERS.index):  # trained ones last: they put the adapter on the model
        aligner = make_aligner(name, model, tok)
        modes = ("batch", "singles") if aligner is None else ("batch-draft", "batch-hold", "singles")
        run_batch(model, tok, aligner, questions[:2], 8)  # warm-up
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for i in range(args.repeats):
            for mode in modes:
                if mode == "singles":
                    runs[mode].append(run_singles(model, tok, aligner, questions, args.max_new_tokens))
                else:
                    completed_rows = mode.split("-")[1] if "-" in mode else "draft"
                    runs[mode].append(run_batch(model, tok, aligner, questions, args.max_new_tokens, completed_rows))
            print(f"[{name}] repeat {i + 1}: " + ", ".join(f"{m} {runs[m][-1]['seconds']:.1f} s" for m in modes),
                  file=sys.stderr)
        entry: dict[str, Any] = {}
        singles_rows = runs["singles"][-1]["rows"]
        for mode in modes:
            last = runs[mode][-1]
            seconds = statistics.median(r["seconds"] for r in runs[mode])
            tokens = sum(len(r) for r in last["rows"])
            entry[mode] = {
                "seconds": [r["seconds"] for r in runs[mode]],
                "seconds_median": seconds,
                "aligner_seconds_median": statistics.median(r["aligner_seconds"] for r in runs[mode]),
                "tokens": tokens,
                "tokens_per_s": tokens / seconds,
                "rows_identical_to_singles": sum(x == y for x, y in zip(last["rows"], singles_rows, strict=True)),
                "stats": last["stats"],
                "aligner_work": last["aligner_work"],
                "kv_cache_peak_mib": last["kv_cache_peak_mib"],
            }
            if not args.no_memory and aligner is not None:
                entry[mode]["memory_fresh_process"] = memory(args, name, mode)
        for mode in modes[:-1]:
            entry[mode]["throughput_ratio_vs_singles"] = entry[mode]["tokens_per_s"] / entry["singles"]["tokens_per_s"]
            # paired: each repetition's batch against the singles run right after it
            scale = entry[mode]["tokens"] / entry["singles"]["tokens"]
            entry[mode]["ratio_per_repeat"] = [
                scale * s / b for b, s in zip(entry[mode]["seconds"], entry["singles"]["seconds"], strict=True)
            ]
        report["results"][name] = entry

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nSmolLM2-135M-Instruct, CPU ({report['machine']['threads']} threads), batch of {args.batch_size} vs "
          f"{args.batch_size} single runs, max_new_tokens={args.max_new_tokens}, greedy, median of {args.repeats}\n")
    print("| aligner | mode | seconds (median) | of which aligner | tokens | tokens/s | throughput vs singles | "
          "held share | upstream row-slots | aligner calls | peak cache columns | KV cache peak (MiB) | "
          "peak RSS during run (MiB) | rows = singles |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, entry in report["results"].items():
        for mode, e in entry.items():
            st = e["stats"]
            ratio = e.get("throughput_ratio_vs_singles")
            shown = f"**{ratio:.2f}×**" if ratio else "1 (baseline)"
            held = 1 - st["upstream_real_tokens"] / st["upstream_slots"] if st["upstream_slots"] else 0.0
            mem = e.get("memory_fresh_process", {}).get("peak_during_run_over_start_mib", float("nan"))
            print(f"| {name} | {mode} | {e['seconds_median']:.1f} | {e['aligner_seconds_median']:.1f} | {e['tokens']} | "
                  f"{e['tokens_per_s']:.1f} | {shown} | {held:.0%} | {st['upstream_slots']} | {st['aligner_calls']} | "
                  f"{st['peak_cache_columns']} | {e['kv_cache_peak_mib']:.1f} | {mem:.0f} | "
                  f"{e['rows_identical_to_singles']}/{args.batch_size} |")
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
