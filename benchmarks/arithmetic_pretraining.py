"""How fast a small model trained from scratch learns the digit arithmetic on bare equations, and whether that
survives training on the correction records (docs/results.md, "Arithmetic pretraining").

    python -m benchmarks.arithmetic_pretraining --tokenizer DIR --output DIR [--steps 3000] [--batch-size 256]

Every ``--eval-every`` steps the model completes 400 held-out bare equations (``split == "test"`` triples,
:func:`examples.arithmetic.build_small_aligner.arithmetic_accuracy`, greedy) and the share right per operator is
printed as one JSON line. Training data: equations drawn afresh each step as
:func:`~examples.arithmetic.build_small_aligner.arithmetic_facts` draws them (held-in triples only), loss on the
result and EOS; AdamW (betas 0.9/0.98, weight decay 0.01), 200 warm-up steps, cosine, gradient norm clipped at 1
(the settings of ``pretrain_arithmetic``, which runs the same on ``transformers.Trainer`` over a fixed pool). The
model (a Llama of ``--hidden-size`` x ``--layers``, as ``init_model`` builds it) is saved to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer directory (make aligner-small's work-dir/base)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from examples.arithmetic.build_small_aligner import arithmetic_accuracy, arithmetic_facts, encode_facts, init_model

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    model = init_model(tok, hidden_size=args.hidden_size, layers=args.layers, seed=0)
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = lambda s: min(1, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        batch = collate(encode_facts(tok, arithmetic_facts(args.batch_size, seed=rng.randrange(2**31))))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % args.eval_every == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 3), "held_out_accuracy": arithmetic_accuracy(model, tok),
                              "seconds": round(time.perf_counter() - t0)}), flush=True)  # fmt: skip
    model.save_pretrained(args.output)
    tok.save_pretrained(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
