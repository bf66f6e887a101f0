"""Benchmark: a LoRA aligner on one copy of the weights (the adapter on the upstream itself) against two copies (the
adapter on a second SmolLM2), on the SmolLM2 demo workload (``make demo``'s questions, greedy, float32, CPU).

Each run is a fresh child process (so that peak resident memory is the run's own): ``upstream`` loads SmolLM2 and
answers the questions with plain ``generate`` (the upstream alone, the memory baseline); ``one-copy`` and
``two-copies`` load the shipped arithmetic aligner on the upstream itself or on a second SmolLM2 and answer the same
questions stream-aligned. Runs are interleaved (upstream, one-copy, two-copies, upstream, ...) so the machine's noise
hits all alike; medians are reported, and the two aligned modes' tokens are compared.

    python -m benchmarks.one_copy                  # 3 repetitions
    python -m benchmarks.one_copy --repeats 1 --max-new-tokens 64

Writes JSON (``benchmarks/results/one_copy.json``) and prints a markdown table.
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

MODES = ("upstream", "one-copy", "two-copies")


def child(mode: str, max_new_tokens: int, cache_dir: str | None) -> dict[str, Any]:
    """Load and run ``mode`` once in this process; peak RSS (``ru_maxrss``) after loading and after the run."""
    import torch

    from examples.arithmetic import load_arithmetic_aligner
    from examples.arithmetic.demo import default_questions
    from examples.smollm2 import load_smollm2
    from transformers_stream_aligner import enable_stream_alignment

    t0 = time.perf_counter()
    model, tok = load_smollm2(cache_dir)
    enable_stream_alignment(model, tok)
    aligner = None
    if mode == "one-copy":
        aligner = load_arithmetic_aligner(base_model=model)
    elif mode == "two-copies":
        aligner = load_arithmetic_aligner(cache_dir=cache_dir)
    load_s = time.perf_counter() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    outputs = []
    t1 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for question in default_questions(0):  # make demo's questions (--seed 0)
            inputs = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)  # fmt: skip
            options = {"max_new_tokens": max_new_tokens, "do_sample": False}
            if aligner is not None:
                options.update(aligner=aligner, aligner_question=question, invalid_correction="keep_original")
            out = model.generate(**inputs, **options)
            outputs.append(out[0, inputs["input_ids"].shape[1] :].tolist())
    run_s = time.perf_counter() - t1
    return {"mode": mode, "load_s": load_s, "run_s": run_s, "tokens": sum(len(o) for o in outputs),
            "rss_after_load_mib": rss_loaded,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "outputs": outputs}  # fmt: skip


def run_child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.one_copy", "--child", mode, "--max-new-tokens", str(args.max_new_tokens)]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=160, help="as make demo (default 160)")
    parser.add_argument("--cache-dir", default=os.environ.get("STREAM_ALIGNER_CACHE"))
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "one_copy.json"))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.max_new_tokens, args.cache_dir)))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for i in range(args.repeats):
        for mode in MODES:
            runs[mode].append(run_child(mode, args))
        print(f"repeat {i + 1}: " + ", ".join(f"{m} {runs[m][-1]['run_s']:.1f} s, {runs[m][-1]['peak_rss_mib']:.0f} MiB"
                                                for m in MODES), file=sys.stderr)  # fmt: skip
    summary: dict[str, Any] = {}
    for mode, rs in runs.items():
        summary[mode] = {
            "run_s": [r["run_s"] for r in rs],
            "run_s_median": statistics.median(r["run_s"] for r in rs),
            "load_s_median": statistics.median(r["load_s"] for r in rs),
            "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in rs),
            "rss_after_load_mib_median": statistics.median(r["rss_after_load_mib"] for r in rs),
            "tokens": rs[-1]["tokens"],
        }
    upstream_rss = summary["upstream"]["peak_rss_mib_median"]
    for mode in ("one-copy", "two-copies"):
        summary[mode]["peak_rss_over_upstream"] = summary[mode]["peak_rss_mib_median"] / upstream_rss - 1
    summary["one-copy"]["time_vs_two_copies"] = summary["one-copy"]["run_s_median"] / summary["two-copies"]["run_s_median"]
    same = all(a["outputs"] == b["outputs"] for a, b in zip(runs["one-copy"], runs["two-copies"], strict=True))
    report = {
        "machine": {"python": platform.python_version(), "cores": os.cpu_count(), "platform": platform.platform()},
        "settings": {"repeats": args.repeats, "max_new_tokens": args.max_new_tokens,
                     "workload": "make demo's questions, SmolLM2-135M-Instruct float32, greedy"},  # fmt: skip
        "summary": summary,
        "one_copy_tokens_equal_two_copies": same,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print("\n| mode | peak RSS (MiB, median) | over the upstream alone | workload (s, median) | load (s) | tokens |")
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        s = summary[mode]
        over = s.get("peak_rss_over_upstream")
        print(f"| {mode} | {s['peak_rss_mib_median']:.0f} | {'-' if over is None else f'{over:+.1%}'} | "
              f"{s['run_s_median']:.1f} | {s['load_s_median']:.1f} | {s['tokens']} |")  # fmt: skip
    print(f"\none copy / two copies, workload time: {summary['one-copy']['time_vs_two_copies']:.2f}; "
          f"same tokens: {same}\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
