"""Benchmark: when finished rows leave the upstream's batch (SmolLM2-135M-Instruct, CPU, the bench-batch prompts).

Two rules for the same batch of 8, identity aligner, in one run with the repetitions interleaved:

- ``halving`` (the engine's rule): finished rows ride along held until at most half of the batch is left, then
  leave together (``TransformersEngine._leave_finished``);
- ``each-round`` (the rule before 2026-12-02): every finished row leaves before the next round.

The second sets ``TransformersEngine.finished_rows_leave_at = 1.0`` for the duration of its runs. Both give the same
tokens (checked).
Also prints the median time of a forward by the number of rows in it, which is where the difference comes from.

    python -m benchmarks.finished_rows --repeats 5
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.batch_vs_single import QUESTIONS, identity, load, run_batch
from transformers_stream_aligner.runtime.engines.transformers_engine import TransformersEngine

HALVING = TransformersEngine.finished_rows_leave_at
RULES = {"halving": HALVING, "each-round": 1.0}  # the share of the batch left at which finished rows leave


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "finished_rows.json"))
    args = parser.parse_args()

    model, tok = load(args.cache_dir)
    forwards: list[tuple[int, float]] = []
    started: list[float] = []
    model.register_forward_pre_hook(lambda m, a, k: started.append(time.perf_counter()), with_kwargs=True)
    model.register_forward_hook(
        lambda m, a, k, o: forwards.append((k["input_ids"].shape[0], time.perf_counter() - started.pop())), with_kwargs=True
    )
    run_batch(model, tok, identity, QUESTIONS[:2], 8)  # warm-up
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in RULES}
    by_rows: dict[str, dict[int, list[float]]] = {name: collections.defaultdict(list) for name in RULES}
    try:
        for i in range(args.repeats):
            for name, rule in RULES.items():
                TransformersEngine.finished_rows_leave_at = rule
                forwards.clear()
                result = run_batch(model, tok, identity, QUESTIONS, args.max_new_tokens)
                runs[name].append(result)
                for rows, seconds in forwards[1:]:  # the first is the prompts' prefill
                    by_rows[name][rows].append(seconds)
            print(f"repeat {i + 1}: " + ", ".join(f"{n} {runs[n][-1]['seconds']:.1f} s" for n in RULES), file=sys.stderr)
    finally:
        TransformersEngine.finished_rows_leave_at = HALVING
    same = all(a["rows"] == b["rows"] for a, b in zip(runs["halving"], runs["each-round"], strict=True))
    report: dict[str, Any] = {"repeats": args.repeats, "same_tokens": same, "rules": {}}
    for name in RULES:
        seconds = [r["seconds"] for r in runs[name]]
        report["rules"][name] = {
            "seconds": seconds,
            "seconds_median": statistics.median(seconds),
            "upstream_slots": runs[name][-1]["stats"]["upstream_slots"],
            "upstream_real_tokens": runs[name][-1]["stats"]["upstream_real_tokens"],
            "forward_ms_by_rows": {
                rows: {"forwards": len(t) // args.repeats, "median_ms": 1000 * statistics.median(t)}
                for rows, t in sorted(by_rows[name].items())
            },
        }
    paired = [b["seconds"] / a["seconds"] for a, b in zip(runs["halving"], runs["each-round"], strict=True)]
    report["each_round_over_halving"] = {"per_repeat": paired, "median": statistics.median(paired)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))

    print(f"\nbatch of 8, identity aligner, max_new_tokens={args.max_new_tokens}, median of {args.repeats}; "
          f"same tokens: {same}\n")
    print("| rule | seconds (median) | upstream row-slots | forwards by rows: count × median ms |")
    print("|---|---|---|---|")
    for name, e in report["rules"].items():
        shapes = ", ".join(f"{r} rows: {v['forwards']} × {v['median_ms']:.0f}" for r, v in e["forward_ms_by_rows"].items())
        print(f"| {name} | {e['seconds_median']:.1f} | {e['upstream_slots']} | {shapes} |")
    print(f"\neach-round / halving time, paired per repetition: {', '.join(f'{x:.3f}' for x in paired)} "
          f"(median {report['each_round_over_halving']['median']:.3f})\nJSON: {args.json}")


if __name__ == "__main__":
    main()
