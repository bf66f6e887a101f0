"""Benchmark: how fast could the batched aligner be on this machine? A lower bound from measured rates.

``make bench-batch`` measures batch-8 against 8 single runs with the trained aligner. This script asks what the best
possible batched aligner would reach on the same hardware, from three measurements taken in one run:

1. the machine's rates for SmolLM2-135M-Instruct (float32): one decode step at batch 1 (a forward of one token,
   bound by per-forward overhead, not arithmetic) and the best prefill cost per token (a batch of 8 blocks of 80
   tokens: compute-bound);
2. the trained aligner's work in a batch-8 run of the bench-batch workload, call by call (``AlignerDecodingStats``):
   the real tokens each call fed (prompts, drafts and outputs, no padding) and its forwards;
3. the same workload as 8 single runs (the baseline).

The bound: a batched call cannot cost less than its first forward's real tokens at the best prefill rate plus one
batch-1 decode step for each further forward (every further forward decodes at least one row, one token after the
other). Added over the calls, with the upstream side as measured, it bounds the batch's throughput against the
singles from above: no padding scheme or batching trick inside the aligner can beat it on this hardware.

    python -m benchmarks.batch_floor            # ~3 minutes on 2 cores
    python -m benchmarks.batch_floor --json benchmarks/results/batch_floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.batch_vs_single import QUESTIONS, load, make_aligner, run_batch, run_singles


@torch.no_grad()
def forward_seconds(model: Any, batch: int, tokens: int, context: int = 150, repeats: int = 5) -> float:
    """Median seconds of one forward feeding ``batch`` rows of ``tokens`` tokens after ``context`` cached ones."""
    from transformers import DynamicCache

    def once() -> float:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.randint(100, 1000, (batch, context)), past_key_values=cache, use_cache=True, logits_to_keep=1)
        t0 = time.perf_counter()
        model(input_ids=torch.randint(100, 1000, (batch, tokens)), past_key_values=cache, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - t0

    once()  # warm-up
    return statistics.median(once() for _ in range(repeats))


class CallLog:
    """Records each ``AlignerDecoder.generate`` call's work (rows, forwards, real tokens fed, seconds). Wraps the
    decoder instance's method; **mutates** the decoder (``remove`` restores it)."""

    def __init__(self, decoder: Any) -> None:
        self.decoder, self.calls = decoder, []
        inner = decoder.generate

        def generate(prompts: Any, **kwargs: Any) -> Any:
            stats = decoder.stats
            t0, fed0 = time.perf_counter(), stats.fed_tokens
            out = inner(prompts, **kwargs)
            self.calls.append({"rows": len(prompts), "forwards": stats.forwards_last_call,
                               "fed_tokens": stats.fed_tokens - fed0, "seconds": time.perf_counter() - t0})
            return out

        decoder.generate = generate

    def remove(self) -> None:
        del self.decoder.generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--cache-dir", default=os.environ.get("STREAM_ALIGNER_CACHE"))
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "batch_floor.json"))
    args = parser.parse_args()

    model, tok = load(args.cache_dir)
    rates = {
        "decode_step_batch1_s": forward_seconds(model, 1, 1),
        "decode_step_batch8_s": forward_seconds(model, 8, 1),
        "prefill_1x80_s_per_token": forward_seconds(model, 1, 80) / 80,
        "prefill_8x80_s_per_token": forward_seconds(model, 8, 80) / 640,
    }
    best_prefill = min(rates["prefill_1x80_s_per_token"], rates["prefill_8x80_s_per_token"])
    print({k: round(v, 4) for k, v in rates.items()}, file=sys.stderr)

    aligner = make_aligner("trained", model, tok)
    run_batch(model, tok, aligner, QUESTIONS[:2], 8)  # warm-up (also builds the decoder)
    log = CallLog(aligner._fast_decoder())
    runs: dict[str, Any] = {}
    for mode in ("batch", "singles"):
        log.calls = []
        run = run_batch if mode == "batch" else run_singles
        result = run(model, tok, aligner, QUESTIONS, args.max_new_tokens)
        runs[mode] = {"seconds": result["seconds"], "aligner_seconds": result["aligner_seconds"], "calls": log.calls,
                      "rows": result["rows"]}
        print(f"{mode}: {result['seconds']:.1f} s, aligner {result['aligner_seconds']:.1f} s", file=sys.stderr)
    log.remove()

    batch, singles = runs["batch"], runs["singles"]
    floor = sum(c["fed_tokens"] * best_prefill + (c["forwards"] - 1) * rates["decode_step_batch1_s"] for c in batch["calls"])
    serial = sum((c["forwards"] - 1) * rates["decode_step_batch1_s"] for c in batch["calls"])
    upstream_batch = batch["seconds"] - batch["aligner_seconds"]
    report = {
        "rates": rates,
        "batch": {k: v for k, v in batch.items() if k != "rows"},
        "singles": {k: v for k, v in singles.items() if k != "rows"},
        "same_tokens": batch["rows"] == singles["rows"],
        "measured_ratio": singles["seconds"] / batch["seconds"],
        "aligner_floor_s": floor,
        "aligner_floor_serial_decode_s": serial,
        "upstream_batch_s": upstream_batch,
        "ratio_bound": singles["seconds"] / (upstream_batch + floor),
        "ratio_bound_upstream_free": singles["seconds"] / floor,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    fed = sum(c["fed_tokens"] for c in batch["calls"])
    print(f"\nrates: decode step batch 1 {rates['decode_step_batch1_s'] * 1e3:.0f} ms, batch 8 "
          f"{rates['decode_step_batch8_s'] * 1e3:.0f} ms; prefill {rates['prefill_1x80_s_per_token'] * 1e3:.2f} ms/token "
          f"(1x80), {rates['prefill_8x80_s_per_token'] * 1e3:.2f} ms/token (8x80)")
    print(f"batch-8: {batch['seconds']:.1f} s (aligner {batch['aligner_seconds']:.1f} s, {len(batch['calls'])} calls, "
          f"{fed} real tokens fed); 8 singles: {singles['seconds']:.1f} s (aligner {singles['aligner_seconds']:.1f} s); "
          f"measured {report['measured_ratio']:.2f}x; same tokens: {report['same_tokens']}")
    print(f"aligner floor in the batch: {floor:.1f} s (of which serial decode steps {serial:.1f} s)")
    print(f"bound on batch-8 vs singles with the upstream side as measured ({upstream_batch:.1f} s): "
          f"{report['ratio_bound']:.2f}x; even with a free upstream: {report['ratio_bound_upstream_free']:.2f}x")
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
