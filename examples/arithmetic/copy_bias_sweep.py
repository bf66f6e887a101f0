"""How ``copy_bias`` trades corrections for precision, per aligner: ``python -m examples.arithmetic.copy_bias_sweep``.

For each bias, an aligner corrects two **held-in** sets (tuning data: no held-out problem or claim is used, so the
evaluation's figures stay honest) and the exact checker judges the outputs:

* on-policy sentences the precise recipe collected (``--records``, the ``greedy.jsonl`` of ``make aligner-precise``)
  that the checker kept and that the precise recipe's assembly did not pick for training (seed 0, 1.5 copies per
  change), or with ``--all-unseen`` every kept sentence of records no build trained on (the calculator recipe's
  ``tune.jsonl``): prose and right arithmetic, each must come out unchanged;
* held-in claims in many written forms (:func:`~.claims.make_claims`, ``split="train"``, a seed other than the
  training one), judged by construction: right ones broken, wrong ones fixed.

Each result is appended to ``--output`` (JSON lines), so several aligners and biases build one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import Any


def held_in_sets(records_path: str, *, n_records: int, n_claims: int, claims_seed: int,
                 all_unseen: bool = False) -> tuple[list[dict], list[Any]]:  # fmt: skip
    """The unseen kept on-policy records and the held-in claims (both seeded). ``all_unseen``: no record of
    ``records_path`` was trained on (the calculator recipe's ``tune.jsonl``), so none is set aside."""
    from .build_aligner import balance
    from .claims import make_claims

    records = [json.loads(line) for line in Path(records_path).read_text().splitlines() if line.strip()]
    picked = set() if all_unseen else {id(r) for r in balance(records, copies_per_change=1.5, seed=0)}
    unseen = [r for r in records if id(r) not in picked and r["correction"].strip() == r["last"].strip()]
    random.Random(0).shuffle(unseen)
    return unseen[:n_records], make_claims(n_claims, seed=claims_seed, split="train")


def sweep_one(aligner: Any, bias: float, records: list[dict], claims: list[Any], *, batch_size: int = 8) -> dict[str, Any]:
    """One bias: **mutates** ``aligner`` (its ``config`` becomes a copy with ``copy_bias=bias``, the old config object
    untouched; its cache is reset); returns the counts."""
    from transformers_stream_aligner import AlignmentRequest

    from .claims import judge_claim
    from .task import judge_sentence

    aligner.config = dataclasses.replace(aligner.config, copy_bias=bias)
    aligner.reset_cache()
    t0 = time.perf_counter()

    def run(requests: list[Any]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(requests), batch_size):
            out += aligner.correct(requests[i : i + batch_size])
        return out

    outs = run([AlignmentRequest(r["question"], r["prefix"], r["last"]) for r in records])
    kinds = [judge_sentence(r["question"], r["last"]) for r in records]
    changed = [o.strip() != r["last"].strip() for o, r in zip(outs, records, strict=True)]
    couts = run([AlignmentRequest(c.question, "", c.last) for c in claims])
    verdicts = [judge_claim(c, o) for c, o in zip(claims, couts, strict=True)]
    right = [v for c, v in zip(claims, verdicts, strict=True) if not c.wrong]
    wrong = [v for c, v in zip(claims, verdicts, strict=True) if c.wrong]
    return {
        "copy_bias": bias,
        "prose_changed": sum(ch for ch, k in zip(changed, kinds, strict=True) if k == "unchecked"),
        "prose_n": kinds.count("unchecked"),
        "right_sentences_broken": sum(judge_sentence(r["question"], o) == "wrong" for o, r, k in zip(outs, records, kinds, strict=True) if k == "right"),
        "right_sentences_n": kinds.count("right"),
        "claims_right_broken": right.count("broken"), "claims_right_changed": len(right) - right.count("kept"),
        "claims_right_n": len(right), "claims_wrong_fixed": wrong.count("fixed"), "claims_wrong_n": len(wrong),
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from ..smollm2 import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aligner", required=True, help="aligner checkpoint (a LoRA on SmolLM2 or a full one)")
    parser.add_argument("--name", help="how the table names it (default: the path)")
    parser.add_argument("--biases", default="0,1,2,3,4", help="comma-separated copy_bias values (default 0,1,2,3,4)")
    parser.add_argument("--records", default=str(default_cache_dir() / "arithmetic-aligner-work-precise" / "greedy.jsonl"),
                        help="the precise recipe's on-policy records (greedy.jsonl)")
    parser.add_argument("--all-unseen", action="store_true",
                        help="no record of --records was trained on (the calculator recipe's tune.jsonl)")
    parser.add_argument("--n-records", type=int, default=240)
    parser.add_argument("--n-claims", type=int, default=240)
    parser.add_argument("--claims-seed", type=int, default=5, help="held-in claims' seed (training used 0)")
    parser.add_argument("--output", default="benchmarks/results/copy_bias_sweep.jsonl")
    args = parser.parse_args(argv)

    from transformers_stream_aligner import StreamAligner

    from ..smollm2 import load_smollm2

    records, claims = held_in_sets(args.records, n_records=args.n_records, n_claims=args.n_claims,
                                   claims_seed=args.claims_seed, all_unseen=args.all_unseen)  # fmt: skip
    model, _ = load_smollm2()
    aligner = StreamAligner.from_pretrained(args.aligner, base_model=model, local_files_only=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    for bias in (float(b) for b in args.biases.split(",")):
        row = {"aligner": args.name or args.aligner, **sweep_one(aligner, bias, records, claims)}
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
