"""The small arithmetic aligner: a 4M-parameter Llama trained from scratch, for the arithmetic only
(``make aligner-small``).

Why from scratch: SmolLM2-135M cannot do the arithmetic an aligner must check. Asked for sums and differences in
its own chat format it gets ``30 + 4`` wrong most of the time and ``53 - 19`` almost always (docs/results.md), so
a LoRA on it (the v2 and precise recipes of :mod:`.build_aligner`) learns to copy or to guess, not to check. A
small model trained only on this task learns the digit arithmetic from enough examples, copies the rest, and costs
a fraction of a SmolLM2 forward per sentence.

The small model reads the sentence alone (:data:`PROMPT`) and is trained with the copy bias it runs with
(``AlignerTrainingConfig.copy_bias``, docs/training.md): copying comes with the bias, so the model only has to learn
where a sentence is wrong and what to write there, which a model trained from scratch on a CPU can learn in a session
(plain cross-entropy had not even learned to copy after one epoch: docs/results.md).

Steps (every one in this process; wall times printed and saved in ``build_report.json``):

1. Records (:func:`records`), all held-in (``split="train"``; none is ever evaluated):
   the precise recipe's greedy on-policy records (SmolLM2's answers to 320 held-in problems and the 88 held-in
   non-arithmetic questions, corrected by :func:`~.task.check_arithmetic_precise`; ``--records``, as
   ``make aligner-precise`` collects them) that the sentence alone shows (:func:`self_contained`), weighted twice;
   claims in many written forms (:func:`~.claims.make_claims`, ``--wrong-fraction`` wrong); product claims (worked
   out where wrong); prose to copy (:func:`prose_sentences`: sentences of the Python standard library's
   docstrings, none with arithmetic).
2. A byte-level BPE tokenizer trained on those records (:func:`train_tokenizer`: every digit its own token).
3. A Llama initialised from its config (:func:`init_model`, seeded).
4. :func:`~transformers_stream_aligner.train_aligner` on all weights with ``copy_bias`` (:data:`SETTINGS`).
5. Stored in float16 (about 8 MiB) with ``stream_aligner_config.json`` (the prompt and the copy bias), the model
   card and ``build_report.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from . import ARITHMETIC_ALIGNER

#: The aligner's instruction template (plain text, no chat template): the sentence alone, so a call feeds few tokens.
#: The aligner fixes what the sentence itself shows wrong (``58 - 37 = 15``); a result that is wrong only given
#: the question (``So, the answer is 100.``) is left as written.
PROMPT = ">>> {last}\n<<< "

#: Flag defaults (the build of 2026-11-24).
SETTINGS: dict[str, Any] = {
    "claims": 8000, "facts": 60000, "wrong_fraction": 0.4, "products": 4000, "prose": 6000, "prose_files": 3000,
    "on_policy_weight": 2, "vocab_size": 2048, "hidden_size": 256, "layers": 4,
    "epochs": 5.0, "learning_rate": 2e-3, "batch_size": 64, "max_length": 256, "max_correction_tokens": 160,
    "copy_bias": 5.0, "plain_weight": 0.1,
}  # fmt: skip


def self_contained(record: dict[str, str]) -> bool:
    """Whether the sentence alone shows its correction: the checker, given no question and no prefix, corrects it
    the same way (a copy always is). The only records an aligner that reads the sentence alone can learn from.

    >>> self_contained({"last": "So, 42 - 7 = 31.", "correction": "So, 42 - 7 = 35."})
    True
    >>> self_contained({"last": "So, the answer is 100.", "correction": "So, the answer is 60."})
    False
    """
    from .task import check_arithmetic_precise

    last, correction = record["last"].strip(), record["correction"].strip()
    return last == correction or check_arithmetic_precise("", "", last).strip() == correction


def prose_sentences(n: int, *, seed: int, max_files: int = 3000) -> list[str]:
    """Up to ``n`` English sentences (25-220 characters, no arithmetic) from the docstrings of the first ``max_files``
    modules of the Python standard library this interpreter runs on: text for the aligner to copy. Seeded; depends
    on the Python version.

    >>> s = prose_sentences(3, seed=0, max_files=40)
    >>> len(s), all(x[0].isupper() for x in s)
    (3, True)
    """
    import sysconfig

    from transformers_stream_aligner import split_sentences

    root = Path(sysconfig.get_paths()["stdlib"])
    found: set[str] = set()
    for path in sorted(root.rglob("*.py"))[:max_files]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                doc = ast.get_docstring(node)
                for s in split_sentences(" ".join(doc.split())) if doc else []:
                    s = s.strip()
                    if 25 <= len(s) <= 220 and s[0].isupper() and not re.search(r"\d\s*[-+*/x×÷=]\s*\d", s):
                        found.add(s)
    sentences = sorted(found)
    random.Random(seed).shuffle(sentences)
    return sentences[:n]


def embedded_facts(n: int, *, seed: int, wrong_fraction: float, carriers: list[str]) -> list[dict[str, str]]:
    """``n`` records whose sentence states one held-in fact ``a op b = c`` (operands 2-99 as the problems draw them,
    never a held-out triple nor a probe), a ``wrong_fraction`` share with a near-miss result, written bare or inside
    the opening words of a ``carriers`` sentence (so the aligner learns to copy any context and change the result
    only), corrected by :func:`~.task.check_arithmetic_precise`. Pure, seeded.

    >>> r = embedded_facts(3, seed=0, wrong_fraction=1.0, carriers=["The value of a thing is kept here."])
    >>> all(x["correction"] != x["last"] for x in r), len(r)
    (True, 3)
    """
    from .task import PROBES, ArithmeticProblem, _near_miss, check_arithmetic_precise, draw_operands

    rng = random.Random(seed)
    syms = {"+": ["+", " + "], "-": ["-", " - "], "*": ["*", " * ", " × ", "×", " x "], "/": ["/", " / ", " ÷ "]}
    out: list[dict[str, str]] = []
    while len(out) < n:
        op = "+-*/"[len(out) % 4]
        a, b = draw_operands(op, rng)
        if (a, op, b) in PROBES or ArithmeticProblem(a, op, b, "").split != "train":
            continue
        value = int(ArithmeticProblem(a, op, b, "").answer)
        c = _near_miss(value, rng) if rng.random() < wrong_fraction else value
        claim = f"{a}{rng.choice(syms[op])}{b} = {c}"
        if rng.random() < 0.3 or not carriers:
            last = claim + rng.choice([".", "", ",", " in total."])
        else:
            words = rng.choice(carriers).rstrip(".").split()
            last = " ".join(words[: rng.randint(1, min(8, len(words)))]) + rng.choice([" ", ": ", ", "]) + claim + "."
        correction = check_arithmetic_precise("", "", last)
        if (correction == last) != (c == value):  # the checker must see the claim; else it is no record
            continue
        out.append({"question": f"What is {a} {op} {b}?", "prefix": "", "last": last, "correction": correction})
    return out


def records(on_policy: list[dict[str, str]], *, seed: int, claims: int, wrong_fraction: float, products: int,
            prose: int, on_policy_weight: int, prose_files: int = 3000, facts: int = 0) -> tuple[list[dict[str, str]], dict[str, int]]:  # fmt: skip
    """The training records (step 1 of the module docstring), shuffled, and their counts. On-policy records that are
    not :func:`self_contained` and records writing a probe (17*23) are left out. Does not modify ``on_policy``."""
    from .claims import make_claims, other_questions, precise_correction
    from .task import check_arithmetic, check_arithmetic_precise, involves_probe, synthetic_product_claims

    rng = random.Random(seed)
    made = [{"question": c.question, "prefix": "", "last": c.last, "correction": precise_correction(c)}
            for c in make_claims(claims, seed=seed, split="train", wrong_fraction=wrong_fraction)]  # fmt: skip
    made += synthetic_product_claims(products, seed=seed, wrong_fraction=wrong_fraction, corrector=check_arithmetic_precise)
    questions = other_questions("train")  # records need one; the prompt does not show it
    sentences = prose_sentences(prose, seed=seed, max_files=prose_files)
    copies = [{"question": rng.choice(questions), "prefix": "", "last": s, "correction": s}
              for s in sentences if check_arithmetic("", "", s) == s]  # fmt: skip
    made += embedded_facts(facts, seed=seed, wrong_fraction=wrong_fraction, carriers=sentences)
    usable = [dict(r) for r in on_policy if self_contained(r)]
    everything = usable * on_policy_weight + made + copies
    kept = [r for r in everything if not any(involves_probe(r[k]) for k in ("prefix", "last", "correction"))]
    rng.shuffle(kept)
    counts = {"on_policy": len(on_policy), "on_policy_self_contained": len(usable), "synthetic": len(made),
              "prose": len(copies), "dropped_probes": len(everything) - len(kept), "trained_on": len(kept),
              "trained_changed": sum(r["last"].strip() != r["correction"].strip() for r in kept)}  # fmt: skip
    return kept, counts


def train_tokenizer(texts: list[str], *, vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``: every digit its own token (so numbers are
    read digit by digit), ``<|endoftext|>`` as EOS, ``<pad>`` for padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>")


def init_model(tokenizer: Any, *, hidden_size: int, layers: int, seed: int) -> Any:
    """A Llama causal LM with random weights (seeded): ``layers`` layers of width ``hidden_size``, 4 heads, MLP 3x,
    tied embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=3 * hidden_size,
                         max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ARITHMETIC_ALIGNER), help="where the aligner goes (default: this example's trained_aligner/)")
    parser.add_argument("--work-dir", help="data, tokenizer and training files (default: <cache>/arithmetic-aligner-work-small)")
    parser.add_argument("--records", nargs="+",
                        help="the precise recipe's on-policy records (JSONL; default: <cache>/arithmetic-aligner-work-precise/greedy.jsonl, "
                             "collected by make aligner-precise)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    for name, value in SETTINGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value, help=f"(default {value})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from transformers_stream_aligner import AlignerTrainingConfig, StreamAlignerConfig, read_records, train_aligner

    from ..smollm2 import default_cache_dir
    from .build_aligner import install, timed_steps, to_float16

    cache = default_cache_dir()
    work = Path(args.work_dir) if args.work_dir else cache / "arithmetic-aligner-work-small"
    work.mkdir(parents=True, exist_ok=True)
    sources = args.records or [str(cache / "arithmetic-aligner-work-precise" / "greedy.jsonl")]
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        print(f"[aligner] on-policy records not found: {', '.join(missing)} (collect them with make aligner-precise, "
              "or pass --records)", file=sys.stderr)  # fmt: skip
        return 2
    report: dict[str, Any] = {"recipe": "small", "seed": args.seed, **{k: getattr(args, k) for k in SETTINGS}}
    t_all = time.perf_counter()
    step = timed_steps(report)

    on_policy = [dict(r) for s in sources for r in read_records(s)]
    train_records, report["records"] = step(
        "records", records, on_policy, seed=args.seed, claims=args.claims, wrong_fraction=args.wrong_fraction,
        products=args.products, prose=args.prose, on_policy_weight=args.on_policy_weight, prose_files=args.prose_files,
        facts=args.facts)  # fmt: skip
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_records))
    print(f"[aligner] records: {report['records']}", flush=True)
    texts = [r[k] for r in train_records for k in ("last", "correction")] + [PROMPT]
    tokenizer = step("tokenizer", train_tokenizer, texts, vocab_size=args.vocab_size)
    model = init_model(tokenizer, hidden_size=args.hidden_size, layers=args.layers, seed=args.seed)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    base = work / "base"
    tokenizer.save_pretrained(base)
    model.save_pretrained(base)
    aligner_config = StreamAlignerConfig(instruction_template=PROMPT, prompt_wrapper="{instruction}",
                                         max_correction_tokens=args.max_correction_tokens, copy_bias=args.copy_bias,
                                         base_model="from scratch (examples/arithmetic/build_small_aligner.py)")  # fmt: skip
    trained = work / "aligner"
    config = AlignerTrainingConfig(output_dir=str(trained), overwrite_output_dir=True, num_train_epochs=args.epochs,
                                   learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
                                   warmup_steps=0.03, weight_decay=0.01, max_length=args.max_length, seed=args.seed,
                                   logging_steps=50, copy_bias=args.copy_bias, copy_bias_plain_weight=args.plain_weight,
                                   train_sampling_strategy="group_by_length",
                                   disable_tqdm=True if args.no_progress else None)  # fmt: skip
    result = step("training", train_aligner, base, work / "train.jsonl", config, aligner_config=aligner_config)
    report["training"] = {"steps": result.global_step, "loss": round(result.train_loss, 4),
                          "peak_rss_mib": round(result.peak_rss_mib)}  # fmt: skip
    to_float16(trained, "model.safetensors")
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    install(trained, Path(args.output), report)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
