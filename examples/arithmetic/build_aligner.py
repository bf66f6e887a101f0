"""Rebuild the trained arithmetic aligner from scratch, seeded: ``make aligner`` or
``python -m examples.arithmetic.build_aligner``. Every step calls the library's Python API. Two recipes
(:data:`RECIPES`; any flag overrides a setting):

* ``--recipe v2`` (default, ``make aligner``): the shipped aligner. SmolLM2-135M-Instruct answers 240 held-in
  problems greedily and once more sampled while :func:`~.task.check_arithmetic_worked` corrects each sentence (every
  product with a two-digit operand worked out, right or wrong); changed and kept records 1 : 1, plus 1,000 held-in
  product claims (70% wrong, :func:`~.task.synthetic_product_claims`).
* ``--recipe precise`` (``make aligner-precise``, in development, docs/results.md): precision first, since most
  sentences of a real answer are right. 320 held-in problems and the held-in non-arithmetic questions
  (:func:`~.claims.other_questions`) answered greedily while :func:`~.task.check_arithmetic_precise` corrects (only
  wrong results; a wrong two-digit product worked out); 1.5 kept records per changed one; 1,000 held-in claims in
  many written forms (:func:`~.claims.make_claims`: half right and copied, half wrong and fixed) and 400 held-in
  product claims (half wrong, worked out; right ones copied); LoRA rank 16 (build v3-b, 2026-11-24).

Steps:

1. Held-in questions (``split="train"``; none is ever evaluated).
2. On-policy data with :func:`~transformers_stream_aligner.training.records.records_on_policy` (the upstream
   continues from each corrected sentence), or the records of an earlier collection (``--records``).
3. Assembly (:func:`assemble`): records writing :data:`~.task.PROBES` (17*23) are dropped, so that the test on it
   measures generalisation, not recall.
4. :func:`~transformers_stream_aligner.train_aligner`: a LoRA adapter on SmolLM2-135M-Instruct.
5. The adapter is stored in float16 (peft casts it back to the base's float32 on load) with the tokenizer,
   ``stream_aligner_config.json``, a model card and ``build_report.json`` (the steps' wall times).

Every step runs in this process; the wall time of each is printed and saved.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from . import ARITHMETIC_ALIGNER

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

#: The recipes' settings (flag defaults). ``v2`` built the shipped aligner (2026-11-23): every two-digit product
#: worked, right or wrong; greedy + sampled answers; changed and kept records 1 : 1; 1,000 product claims, 70% wrong.
#: ``precise`` (in development, docs/results.md): change only what is wrong; claims in many forms, half of them wrong.
RECIPES: dict[str, dict[str, Any]] = {
    "v2": {"problems": 240, "corrector": "check_arithmetic_worked", "sampled": True, "other_questions": False,
           "claims": 0, "synthetic_products": 1000, "copies_per_change": 1.0, "max_length": 512, "claims_wrong": 0.4,
           "synthetic_wrong": 0.7, "lora_r": 8, "copy_bias": 0.0},
    "precise": {"problems": 320, "corrector": "check_arithmetic_precise", "sampled": False, "other_questions": True,
                "claims": 1000, "claims_wrong": 0.5, "synthetic_products": 400, "synthetic_wrong": 0.5,
                "copies_per_change": 1.5, "max_length": 256, "lora_r": 16, "copy_bias": 0.0},
}  # fmt: skip


def balance(records: list[dict[str, Any]], *, copies_per_change: float, seed: int) -> list[dict[str, Any]]:
    """All changed records plus ``copies_per_change`` unchanged ones per changed one (seeded), shuffled."""
    changed = [r for r in records if r["correction"].strip() != r["last"].strip()]
    kept = [r for r in records if r["correction"].strip() == r["last"].strip()]
    rng = random.Random(seed)
    kept = rng.sample(kept, min(len(kept), round(copies_per_change * len(changed))))
    out = changed + kept
    rng.shuffle(out)
    return out


def claim_records(n: int, *, seed: int, wrong_fraction: float = 0.4) -> list[dict[str, str]]:
    """``n`` held-in claims (:func:`~.claims.make_claims`, ``wrong_fraction`` wrong) as records with their precise
    corrections."""
    from .claims import make_claims, precise_correction

    return [{"question": c.question, "prefix": "", "last": c.last, "correction": precise_correction(c)}
            for c in make_claims(n, seed=seed, split="train", wrong_fraction=wrong_fraction)]  # fmt: skip


def assemble(
    records: list[dict[str, Any]], *, claims: int, copies_per_change: float | None, seed: int, synthetic: int = 0,
    claims_wrong: float = 0.4, synthetic_wrong: float = 0.7, synthetic_corrector: str = "check_arithmetic_worked",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The training records from the on-policy ones: all kept (or balanced by :func:`balance` when
    ``copies_per_change`` is given), ``claims`` held-in claims (``claims_wrong`` of them wrong) and ``synthetic``
    held-in product claims (``synthetic_wrong`` wrong, corrected by ``synthetic_corrector``) added (counted together as
    ``claims``), those that write a probe (17*23) dropped, all shuffled (seeded); and their counts. Pure: ``records``
    is not modified."""
    from . import task
    from .task import involves_probe, synthetic_product_claims

    def clean(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rs if not any(involves_probe(r[k]) for k in ("prefix", "last", "correction"))]

    def changed(rs: list[dict[str, Any]]) -> int:
        return sum(r["correction"].strip() != r["last"].strip() for r in rs)

    products = synthetic_product_claims(synthetic, seed=seed, wrong_fraction=synthetic_wrong,
                                        corrector=getattr(task, synthetic_corrector)) if synthetic else []  # fmt: skip
    added = claim_records(claims, seed=seed, wrong_fraction=claims_wrong) + products
    on_policy, extra = clean(records), clean(added)
    dropped = len(records) - len(on_policy) + len(added) - len(extra)
    if copies_per_change is not None:
        on_policy = balance(on_policy, copies_per_change=copies_per_change, seed=seed)
    train = on_policy + extra
    random.Random(seed).shuffle(train)
    counts = {"collected": len(records), "collected_changed": changed(records), "dropped_probes": dropped,
              "claims": len(extra), "claims_changed": changed(extra), "synthetic_products": synthetic,
              "trained_on": len(train), "trained_changed": changed(train)}  # fmt: skip
    return train, counts


def to_float16(directory: Path, filename: str = "adapter_model.safetensors") -> None:
    """Rewrite the weights file ``filename`` in ``directory`` in float16 (halves the shipped size; peft and
    ``from_pretrained(dtype=...)`` cast it back on load). Mutates the file in place."""
    import torch
    from safetensors.torch import load_file, save_file

    path = directory / filename
    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def timed_steps(report: dict[str, Any]) -> Any:
    """A ``step(name, fn, *args, **kwargs)`` that runs ``fn``, prints its wall time and records it in
    ``report["steps"][name]`` (mutates ``report``)."""
    report.setdefault("steps", {})

    def step(name: str, fn: Any, *fn_args: Any, **fn_kwargs: Any) -> Any:
        t0 = time.perf_counter()
        print(f"[aligner] {name} ...", flush=True)
        result = fn(*fn_args, **fn_kwargs)
        report["steps"][name] = round(time.perf_counter() - t0, 1)
        print(f"[aligner] {name}: {report['steps'][name]} s", flush=True)
        return result

    return step


def install(trained: Path, out: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as ``build_report.json`` into ``trained``, then replace ``out`` with a copy of ``trained``
    (without checkpoints or training arguments) and print its size."""
    (trained / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("checkpoint-*", "training_args.bin"))
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"[aligner] saved to {out} ({size:.1f} MiB); total {report.get('total_s')} s", flush=True)


def portable(directory: Path, *, copy_bias: float = 0.0, max_correction_tokens: int = 128) -> None:
    """Name the base by its Hub id instead of this machine's cache path (configs and model card), bound a
    correction at ``max_correction_tokens`` (128: a sentence with a worked product is about 80; a runaway stops early)
    and store the ``copy_bias`` the aligner is decoded with."""
    from transformers_stream_aligner import StreamAlignerConfig

    from ..smollm2 import smollm2_checkpoint

    local = str(smollm2_checkpoint())
    for name in ("adapter_config.json", "README.md"):
        path = directory / name
        if path.is_file():
            path.write_text(path.read_text().replace(local, SMOLLM2_HUB_ID))
    config = StreamAlignerConfig.from_pretrained(directory)
    config.base_model = SMOLLM2_HUB_ID
    config.max_correction_tokens = max_correction_tokens
    config.copy_bias = copy_bias
    config.save_pretrained(directory)


def collect_records(questions: list[str], *, seed: int, max_new_tokens: int, progress: bool, sampled: bool,
                    corrector: str = "check_arithmetic_precise") -> list[dict[str, str]]:  # fmt: skip
    """On-policy records: SmolLM2 answers ``questions`` (greedy, or sampled at temperature 0.7) with the precise
    checker correcting each sentence (:func:`~transformers_stream_aligner.training.records.records_on_policy`)."""
    from transformers import set_seed

    from transformers_stream_aligner.training.records import records_on_policy

    from ..smollm2 import load_smollm2
    from . import task

    model, tokenizer = load_smollm2()
    set_seed(seed)
    sampling = {"do_sample": True, "temperature": 0.7} if sampled else {"do_sample": False}
    return records_on_policy(model, tokenizer, questions, getattr(task, corrector), batch_size=8, progress=progress,
                             max_new_tokens=max_new_tokens, **sampling)  # fmt: skip


def train(train_file: Path, output_dir: Path, *, seed: int, epochs: float, learning_rate: float, lora_r: int | None,
          progress: bool, max_length: int = 512) -> None:  # fmt: skip
    """Train the aligner on SmolLM2-135M-Instruct: a LoRA adapter of rank ``lora_r`` (``None``: all weights)."""
    from transformers_stream_aligner import AlignerTrainingConfig, train_aligner

    from ..smollm2 import smollm2_checkpoint

    config = AlignerTrainingConfig(output_dir=str(output_dir), overwrite_output_dir=True, num_train_epochs=epochs,
                                   learning_rate=learning_rate, per_device_train_batch_size=8, max_length=max_length,
                                   seed=seed, disable_tqdm=None if progress else True)  # fmt: skip
    lora_config = None
    if lora_r is not None:
        from peft import LoraConfig

        lora_config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.05, target_modules="all-linear",
                                 task_type="CAUSAL_LM")  # fmt: skip
    result = train_aligner(smollm2_checkpoint(), train_file, config, lora_config=lora_config)
    print(f"[aligner] {result.global_step} steps, mean training loss {result.train_loss:.4f}; {result.train_data.summary()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ARITHMETIC_ALIGNER), help="where the aligner goes (default: this example's trained_aligner/)")
    parser.add_argument("--work-dir", default=None, help="data and training files (default: <cache>/arithmetic-aligner-work-<recipe>)")
    parser.add_argument("--problems", type=int, help="held-in problems (v2: 240, precise: 320)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--claims", type=int,
                        help="records of held-in claims in many written forms, 40%% wrong (v2: 0, precise: 1200)")
    parser.add_argument("--other-questions", action=argparse.BooleanOptionalAction,
                        help="also answer the held-in non-arithmetic questions (copies of prose; precise: on)")
    parser.add_argument("--sampled", action=argparse.BooleanOptionalAction,
                        help="also collect sampled answers (temperature 0.7; v2: on)")
    parser.add_argument("--copies-per-change", type=float,
                        help="keep only this many unchanged on-policy records per changed one (v2: 1; precise: keep all)")
    parser.add_argument("--lora-r", type=int, help="LoRA rank (v2: 8, precise: 16)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA (a 540 MB checkpoint)")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs (default 1)")
    parser.add_argument("--learning-rate", type=float, default=None, help="default 5e-4 for LoRA, 2e-5 for full")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="bound on each upstream answer (default 128)")
    parser.add_argument("--max-length", type=int,
                        help="longest training example in tokens; longer ones lose leading prefix sentences (v2: 512, precise: 256)")
    parser.add_argument("--corrector", choices=["check_arithmetic_precise", "check_arithmetic_worked"],
                        help="the exact checker that writes the on-policy corrections")
    parser.add_argument("--synthetic-products", type=int, help="records of held-in product claims (worked by --corrector)")
    parser.add_argument("--claims-wrong", type=float, help="share of the claims that are wrong (v2: 0.4, precise: 0.5)")
    parser.add_argument("--synthetic-wrong", type=float, help="share of the product claims that are wrong (v2: 0.7, precise: 0.5)")
    parser.add_argument("--records", nargs="+", default=None,
                        help="on-policy records collected before (JSONL, e.g. <work-dir>/greedy.jsonl): skip collecting")
    parser.add_argument("--copy-bias", type=float,
                        help="the copy_bias stored in the aligner's config (v2: 0; precise: tuned on held-in data)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="v2",
                        help="v2: the recipe of the shipped aligner (default); precise: the recipe in development "
                             "(docs/results.md); the other flags override a recipe's settings")  # fmt: skip
    recipe, _ = parser.parse_known_args(argv)
    parser.set_defaults(**RECIPES[recipe.recipe])
    args = parser.parse_args(argv)

    from transformers_stream_aligner.training.records import write_records

    from ..smollm2 import default_cache_dir
    from .claims import other_questions
    from .task import make_problems

    work = Path(args.work_dir) if args.work_dir else default_cache_dir() / f"arithmetic-aligner-work-{args.recipe}"
    work.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    report: dict[str, Any] = {"recipe": args.recipe, "problems": args.problems, "claims": args.claims,
                              "synthetic_products": args.synthetic_products, "seed": args.seed,
                              "claims_wrong": args.claims_wrong, "synthetic_wrong": args.synthetic_wrong,
                              "copy_bias": args.copy_bias,
                              "copies_per_change": args.copies_per_change, "max_length": args.max_length,
                              "lora_r": None if args.full else args.lora_r, "epochs": args.epochs, "steps": {}}  # fmt: skip
    t_all = time.perf_counter()
    step = timed_steps(report)

    questions = [p.question for p in make_problems(args.problems, seed=args.seed, split="train")]
    if args.other_questions:
        questions += other_questions("train")
    common = {"seed": args.seed, "max_new_tokens": args.max_new_tokens, "progress": progress}
    records = []
    if args.records:
        from transformers_stream_aligner import read_records

        for path in args.records:
            records += [dict(r) for r in read_records(path)]
    for name, sampled in (("greedy", False), ("sampled", True)):
        if args.records or (sampled and not args.sampled):
            continue
        collected = step(f"data ({name} answers)", collect_records, questions, sampled=sampled, corrector=args.corrector,
                         **common)  # fmt: skip
        write_records(collected, work / f"{name}.jsonl", overwrite=True)
        records += collected
    train_records, report["records"] = assemble(records, claims=args.claims, copies_per_change=args.copies_per_change,
                                                seed=args.seed, synthetic=args.synthetic_products,
                                                claims_wrong=args.claims_wrong, synthetic_wrong=args.synthetic_wrong,
                                                synthetic_corrector=args.corrector)  # fmt: skip
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_records))
    print(f"[aligner] records: {report['records']}", flush=True)
    trained = work / "aligner"
    learning_rate = args.learning_rate or (2e-5 if args.full else 5e-4)
    step("training", train, work / "train.jsonl", trained, seed=args.seed, epochs=args.epochs,
         learning_rate=learning_rate, lora_r=None if args.full else args.lora_r, progress=progress,
         max_length=args.max_length)  # fmt: skip
    portable(trained, copy_bias=args.copy_bias)
    if not args.full:
        to_float16(trained)
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    install(trained, Path(args.output), report)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
