"""How fast a small model trained from scratch learns the digit arithmetic, on bare equations and then in
sentences as the aligner reads them (docs/results.md, "Arithmetic pretraining").

    python -m benchmarks.arithmetic_pretraining --tokenizer DIR --output DIR [--steps 3000] [--batch-size 256]
    python -m benchmarks.arithmetic_pretraining --base DIR --output DIR --steps 1000 --learning-rate 1e-3 --inline-share 0.75

Runs :func:`examples.arithmetic.build_small_aligner.pretrain_arithmetic` (batches drawn afresh each step, held-in
triples only, loss on the results) on a new Llama of ``--hidden-size`` x ``--layers`` (as ``init_model`` builds it)
or on ``--base``. Every ``--eval-every`` steps the model completes 400 held-out bare equations and 400 held-out wrong
claims in sentences (``split == "test"`` triples, greedy; ``arithmetic_accuracy``, ``inline_accuracy``) and the
share right per operator is printed as one JSON line. The model is saved to ``--output``.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", help="a tokenizer directory (make aligner-small's work-dir/base)")
    parser.add_argument("--base", help="continue from this model (and its tokenizer) instead of a new one")
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--inline-share", type=float, default=0.0, help="share of each batch that is claims in sentences")
    parser.add_argument("--context", type=float, default=0.0, help="share of bare equations that come after other text")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not (args.tokenizer or args.base):
        parser.error("give --tokenizer (a new model) or --base (continue one)")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from examples.arithmetic.build_small_aligner import init_model, pretrain_arithmetic

    tok = AutoTokenizer.from_pretrained(args.base or args.tokenizer)
    model = (AutoModelForCausalLM.from_pretrained(args.base) if args.base
             else init_model(tok, hidden_size=args.hidden_size, layers=args.layers, seed=0))  # fmt: skip
    pretrain_arithmetic(model, tok, steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                        inline_share=args.inline_share, context=args.context, seed=args.seed, eval_every=args.eval_every, progress=False)  # fmt: skip
    model.save_pretrained(args.output)
    tok.save_pretrained(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
