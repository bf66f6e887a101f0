"""Speed of stream alignment against its baselines, on SmolLM2-135M-Instruct (CPU, offline): ``make bench``.

Same prompts (answers of about 320 tokens and 16+ sentences), greedy, one process; the modes of one
repetition run back to back and repetitions are interleaved, so the machine's noise hits all alike.
Medians are reported, and every figure that matters is a ratio to ``plain`` from the same repetition.

Modes:

* ``plain`` - stock ``model.generate`` (no aligner);
* ``identity`` - stream-aligned, an aligner that returns each sentence unchanged (the upstream's overhead);
* ``model`` - stream-aligned with a model aligner of the upstream's size whose corrections are mostly
  copies (default: SmolLM2-135M fine-tuned on 492 on-policy records, 466 of them copies, built once by
  :func:`ensure_copy_aligner`), with copy speculation and KV reuse (the defaults);
* ``model-plain`` - the same aligner decoded by the stock ``generate`` (no copy drafts, no KV reuse);
* ``reference`` - a reference-style loop (below): every sentence re-prefills the prompt and the whole
  answer so far, and the aligner decodes its whole prompt with plain ``generate``;
* ``posthoc`` - Aligner-style: the whole answer is generated, then the aligner rewrites it in one call.

Figures: wall time and its ratio to ``plain``; time to the first corrected sentence (stream modes) against
the post-hoc time to the first corrected token; upstream and aligner forwarded tokens against their
minimum; per-sentence cost as the answer grows (plotted to ``docs/img/speed_scaling.png``).

    python -m benchmarks.speed                    # 3 prompts x 3 repetitions (~25 min on 2 cores)
    python -m benchmarks.speed --prompts 1 --repeats 1 --modes plain,identity,model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS = [
    "Write a long essay of at least twenty sentences about the history of the bicycle.",
    "Give me twenty tips for learning a new language, each in one full sentence.",
    # Short numbered lines, many of them wrong: the aligner changes some (mostly-copy, not all-copy).
    "Work through these problems one by one, writing each calculation as a full sentence: 17*23, 45+19, 38*12, "
    "96-47, 64*8, 125+389, 72*14, 300-158, 19*19, 88+77, 56*3, 910-455.",
]
MODES = ("plain", "identity", "model", "model-plain", "reference", "posthoc")
MAX_CORRECTION_TOKENS = 64


def identity(question: str, prefix: str, last: str) -> str:
    return last


class Recorder:
    """A streamer that timestamps each accepted piece (``put_alignment``)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.records: list[Any] = []

    def put_alignment(self, record: Any) -> None:
        self.times.append(time.perf_counter())
        self.records.append(record)

    def put(self, value: Any) -> None:
        pass

    def end(self) -> None:
        pass


class TimedAligner:
    """Wraps an aligner; keeps the duration of every ``correct`` call."""

    def __init__(self, aligner: Any) -> None:
        from transformers_stream_aligner import as_correction_fn

        self.fn = as_correction_fn(aligner)
        self.calls: list[float] = []

    def correct(self, requests: list[Any]) -> list[str]:
        t0 = time.perf_counter()
        try:
            return self.fn(requests)
        finally:
            self.calls.append(time.perf_counter() - t0)


class FirstToken:
    """A streamer for stock ``generate``: the time its first new token arrives (the prompt comes first)."""

    def __init__(self) -> None:
        self.seen_prompt = False
        self.first: float | None = None

    def put(self, value: Any) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
        elif self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


TOPICS = ["the history of the printing press", "how volcanoes form", "the water cycle", "the life of honeybees",
          "how vaccines work", "the invention of the telephone", "why we need sleep", "how airplanes fly",
          "the French Revolution", "how to start a vegetable garden", "the causes of climate change",
          "how computers store data", "the Great Wall of China", "how to write a good resume",
          "the solar system", "how rainbows form", "the history of chess", "healthy eating habits",
          "how trains work", "the Renaissance", "how to prepare for a job interview", "the human heart",
          "the history of the Olympic Games", "how bridges are built"]  # fmt: skip
TEMPLATES = ["Write a detailed essay of at least fifteen sentences about {}.", "Explain in detail {}, in many sentences.",
             "Write a long, multi-paragraph text about {}."]  # fmt: skip


def aligner_questions() -> list[str]:
    """Held-in questions for the copy aligner's data (none is a benchmark prompt): long-form ones, whose
    sentences are all copies, and ``train_smollm2.py``'s arithmetic ones, where the corrector changes some."""
    from benchmarks.train_smollm2 import questions

    return [TEMPLATES[i % len(TEMPLATES)].format(topic) for i, topic in enumerate(TOPICS)] + questions(40)


def ensure_copy_aligner(path: Path) -> Path:
    """Build the default model aligner once: on-policy records of SmolLM2's answers to held-in questions
    (``stream-aligner build-dataset``; the exact arithmetic corrector of ``train_smollm2.py`` changes the
    wrong ``a op b = c`` claims, every other sentence is a copy), then full fine-tuning of SmolLM2-135M
    (``stream-aligner train``, 1 epoch, lr 1e-4)."""
    if (path / "stream_aligner_config.json").is_file():
        return path
    from benchmarks.train_smollm2 import timed
    from examples.smollm2 import smollm2_checkpoint

    print(f"[bench] building the copy aligner in {path} (once; ~16 min on 2 cores) ...", flush=True)
    work = path.parent / (path.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    smollm2 = str(smollm2_checkpoint())
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    (work / "questions.txt").write_text("\n".join(aligner_questions()) + "\n")
    data = work / "records.jsonl"
    timed(["build-dataset", "--questions", str(work / "questions.txt"), "--upstream", smollm2,
           "--corrector", "benchmarks.train_smollm2:fix_arithmetic",
           "--output", str(data), "--overwrite", "--max-new-tokens", "320", "--batch-size", "8", "--no-progress"], env)  # fmt: skip
    timed(["train", "--base-model", smollm2, "--train-file", str(data), "--num-train-epochs", "1",
           "--learning-rate", "1e-4", "--per-device-train-batch-size", "8", "--max-length", "1024", "--no-progress",
           "--overwrite-output-dir", "--output-dir", str(path)], env)  # fmt: skip
    return path


# ---------------------------------------------------------------------------------------------- modes
def run_plain(model: Any, enc: dict, max_new: int) -> dict:
    t0 = time.perf_counter()
    out = model.generate(**enc, max_new_tokens=max_new, do_sample=False)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "ids": out[0, enc["input_ids"].shape[1] :].tolist()}


def run_stream(model: Any, tok: Any, enc: dict, question: str, aligner: Any, max_new: int) -> dict:
    from transformers_stream_aligner import StreamAligner

    inner = aligner
    decoder_before = None
    if isinstance(aligner, StreamAligner):
        aligner.reset_cache()
        stats = aligner.decoding_stats
        decoder_before = stats.to_dict() if stats is not None else None
    timed_aligner = TimedAligner(aligner)
    recorder = Recorder()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(
            **enc, aligner=timed_aligner, aligner_question=question, max_new_tokens=max_new, do_sample=False,
            streamer=recorder, return_dict_in_generate=True, invalid_correction="keep_original",
            max_correction_tokens=MAX_CORRECTION_TOKENS,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    prompt_len = enc["input_ids"].shape[1]
    trace = out.alignment_trace[0]
    aligned = [i for i, r in enumerate(trace) if r.aligned]
    ttfs = recorder.times[aligned[0]] - t0 if aligned else None
    # Per sentence: upstream time = time since the previous accepted piece minus the aligner's call.
    per_sentence = []
    prev = t0
    calls = iter(timed_aligner.calls)
    for rec, stamp in zip(recorder.records, recorder.times, strict=True):
        aligner_s = next(calls) if rec.aligned else 0.0
        if rec.aligned:
            per_sentence.append(
                {"tokens": len(rec.original_ids), "upstream_s": stamp - prev - aligner_s, "aligner_s": aligner_s, "changed": rec.changed}
            )
        prev = stamp
    result = {
        "seconds": seconds,
        "ttfs": ttfs,
        "aligner_s": sum(timed_aligner.calls),
        "ids": out.sequences[0, prompt_len:].tolist(),
        "sentences": len(aligned),
        "changed": sum(trace[i].changed for i in aligned),
        "per_sentence": per_sentence,
        "upstream_forwarded": out.alignment_stats.upstream_columns,
        "upstream_minimum": upstream_minimum(prompt_len, trace),
    }
    if isinstance(inner, StreamAligner) and inner.decoding_stats is not None:
        after = inner.decoding_stats.to_dict()
        delta = {k: after[k] - (decoder_before or {}).get(k, 0) for k in ("fed_tokens", "forwards", "reused_tokens", "prompt_tokens", "draft_tokens", "accepted_tokens", "output_tokens", "calls")}
        result["aligner_decoding"] = delta
    return result


def upstream_minimum(prompt_len: int, trace: list[Any]) -> int:
    """Positions the upstream must forward: the prompt, every token it generated and kept or replaced
    (each is fed once to produce the next), and each correction's tokens after the longest common prefix
    with the original; minus the newest token of the answer, which is never fed."""
    from transformers_stream_aligner.tokens import longest_common_prefix

    total = prompt_len
    for rec in trace:
        total += len(rec.original_ids)
        if rec.changed:
            total += len(rec.corrected_ids) - longest_common_prefix(rec.original_ids, rec.corrected_ids)
    return total - 1


def run_reference(model: Any, tok: Any, enc: dict, question: str, aligner: Any, max_new: int) -> dict:
    """The reference pipeline's shape: per sentence, a fresh ``generate`` over prompt + answer so far (no KV
    carried over), stopped at the sentence end; then plain aligner decoding of its whole prompt."""
    from transformers import GenerationMixin

    from transformers_stream_aligner import AlignmentRequest, SentenceBoundaryCriteria
    from transformers_stream_aligner.runtime.boundary.splitter import split_whitespace
    from transformers_stream_aligner.tokens import tokenize_plain_text

    eos = {tok.eos_token_id}
    prompt = enc["input_ids"][0].tolist()
    answer: list[int] = []
    prefix = ""
    per_sentence = []
    forwarded = 0
    t0 = time.perf_counter()
    ttfs = None
    while len(answer) < max_new:
        ids = torch.tensor([prompt + answer])
        crit = SentenceBoundaryCriteria(tok, [ids.shape[1]], eos_token_id=sorted(eos))
        t1 = time.perf_counter()
        out = GenerationMixin.generate(
            model, ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new - len(answer), do_sample=False,
            stopping_criteria=[crit], pad_token_id=tok.eos_token_id,
        )  # fmt: skip
        new = out[0, ids.shape[1] :].tolist()
        forwarded += ids.shape[1] + len(new) - 1
        ended = bool(new) and new[-1] in eos
        sentence = new[: crit.cuts[0] - ids.shape[1]] if crit.cuts[0] is not None else [t for t in new if t not in eos]
        text = tok.decode(sentence, skip_special_tokens=True)
        lead, content, trail = split_whitespace(text)
        t2 = time.perf_counter()
        corrected = aligner.correct([AlignmentRequest(question, prefix, content)])[0] if content else ""
        t3 = time.perf_counter()
        if ttfs is None and content:
            ttfs = t3 - t0
        piece = tokenize_plain_text(tok, lead + (corrected or content) + trail) if content else sentence
        answer += piece
        prefix = (prefix + " " + (corrected or content)).strip()
        if content:
            per_sentence.append({"tokens": len(sentence), "upstream_s": t2 - t1, "aligner_s": t3 - t2})
        if ended or not new:
            break
    return {"seconds": time.perf_counter() - t0, "ttfs": ttfs, "ids": answer, "sentences": len(per_sentence),
            "per_sentence": per_sentence, "upstream_forwarded": forwarded}  # fmt: skip


def run_posthoc(model: Any, tok: Any, enc: dict, question: str, aligner: Any, max_new: int) -> dict:
    """Aligner-style: the whole answer first, then one correction of the whole answer (plain decoding)."""
    from transformers import GenerationMixin

    t0 = time.perf_counter()
    out = model.generate(**enc, max_new_tokens=max_new, do_sample=False)
    answer_ids = out[0, enc["input_ids"].shape[1] :].tolist()
    answer = tok.decode(answer_ids, skip_special_tokens=True).strip()
    t_answer = time.perf_counter() - t0
    atok = aligner.tokenizer
    prompt = aligner.config.encode_prompt(atok, question=question, prefix="", last=answer)
    first = FirstToken()
    GenerationMixin.generate(
        aligner.model, torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=len(answer_ids) + 32, do_sample=False, streamer=first, pad_token_id=atok.pad_token_id,
        eos_token_id=atok.eos_token_id,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "ttft": (first.first or time.perf_counter()) - t0, "upstream_s": t_answer}


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aligner", help="model aligner checkpoint (default: the copy aligner, built once)")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", default=str(HERE / "results" / "speed.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "speed_scaling.png"))
    parser.add_argument("--build-aligner-only", action="store_true", help="build the default copy aligner and stop")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot and reprint the table from --json")
    args = parser.parse_args()
    if args.replot:
        report = json.loads(Path(args.json).read_text())
        print(markdown(report))
        plot(report["scaling"], args.plot)
        return
    if args.build_aligner_only:
        from examples.smollm2 import default_cache_dir

        print(ensure_copy_aligner(default_cache_dir() / "bench-copy-aligner"))
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {MODES}")

    from examples.smollm2 import default_cache_dir, load_smollm2
    from transformers_stream_aligner import StreamAligner, StreamAlignerConfig, enable_stream_alignment

    torch.manual_seed(0)
    model, tok = load_smollm2()
    enable_stream_alignment(model, tok)
    aligner_dir = Path(args.aligner) if args.aligner else ensure_copy_aligner(default_cache_dir() / "bench-copy-aligner")
    fast = StreamAligner.from_pretrained(aligner_dir, local_files_only=True)
    fast.config.max_correction_tokens = MAX_CORRECTION_TOKENS  # a runaway correction stops where it is refused
    slow_config = StreamAlignerConfig(**{**fast.config.to_dict(), "copy_draft_tokens": 0, "reuse_kv_cache": False})
    slow = StreamAligner(fast.model, fast.tokenizer, slow_config)
    prompts = PROMPTS[: args.prompts]
    encs = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        for q in prompts
    ]

    def one(mode: str, i: int) -> dict:
        enc, q, n = encs[i], prompts[i], args.max_new_tokens
        if mode == "plain":
            return run_plain(model, enc, n)
        if mode == "identity":
            return run_stream(model, tok, enc, q, identity, n)
        if mode == "model":
            return run_stream(model, tok, enc, q, fast, n)
        if mode == "model-plain":
            return run_stream(model, tok, enc, q, slow, n)
        if mode == "reference":
            return run_reference(model, tok, enc, q, slow, n)
        return run_posthoc(model, tok, enc, q, slow, n)

    print(f"[bench] warm-up; then {len(prompts)} prompts x {args.repeats} repetitions x modes {modes}", flush=True)
    one("model", 0)
    one("plain", 0)
    runs: dict[str, list[list[dict]]] = {m: [[] for _ in prompts] for m in modes}
    for rep in range(args.repeats):
        for i in range(len(prompts)):
            for mode in modes:
                result = one(mode, i)
                runs[mode][i].append(result)
                print(f"[bench] rep {rep} prompt {i} {mode:<12} {result['seconds']:6.2f} s", flush=True)

    report = summarize(runs, modes, prompts, args)
    report["aligner"] = str(aligner_dir)
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    import transformers

    report["transformers"] = transformers.__version__
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    plot(report["scaling"], args.plot)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: dict, modes: list[str], prompts: list[str], args: Any) -> dict:
    out: dict[str, Any] = {"prompts": prompts, "repeats": args.repeats, "max_new_tokens": args.max_new_tokens, "per_prompt": []}
    for i, prompt in enumerate(prompts):
        entry: dict[str, Any] = {"prompt": prompt, "modes": {}}
        plain = runs["plain"][i] if "plain" in runs else None
        for mode in modes:
            rs = runs[mode][i]
            m: dict[str, Any] = {"seconds_median": _median([r["seconds"] for r in rs]), "seconds": [round(r["seconds"], 3) for r in rs]}
            if plain:
                m["ratio_to_plain_median"] = _median([r["seconds"] / p["seconds"] for r, p in zip(rs, plain, strict=True)])
            for key in ("ttfs", "ttft", "aligner_s", "upstream_s"):
                if rs[0].get(key) is not None:
                    m[key + "_median"] = _median([r[key] for r in rs])
            for key in ("sentences", "changed", "upstream_forwarded", "upstream_minimum", "aligner_decoding"):
                if key in rs[0]:
                    m[key] = rs[0][key]
            if "ids" in rs[0]:
                m["tokens"] = len(rs[0]["ids"])
            entry["modes"][mode] = m
        if plain and "identity" in runs:
            entry["identity_equals_plain"] = all(r["ids"] == p["ids"] for r, p in zip(runs["identity"][i], plain, strict=True))
        out["per_prompt"].append(entry)
    goals: dict[str, Any] = {}

    def ratios(a: str, b: str, key_a: str = "seconds", key_b: str = "seconds") -> list[float]:
        return [
            ra[key_a] / rb[key_b]
            for i in range(len(prompts))
            for ra, rb in zip(runs[a][i], runs[b][i], strict=True)
            if ra.get(key_a) is not None and rb.get(key_b) is not None
        ]

    if {"identity", "plain"} <= set(runs):
        goals["identity/plain (goal <= 1.10)"] = _median(ratios("identity", "plain"))
    if {"model", "plain"} <= set(runs):
        goals["model/plain (goal <= 1.35)"] = _median(ratios("model", "plain"))
    if {"model-plain", "plain"} <= set(runs):
        goals["model-plain/plain (no copy drafts, no KV reuse)"] = _median(ratios("model-plain", "plain"))
    if {"reference", "model"} <= set(runs):
        goals["reference/model (goal >= 2)"] = _median(ratios("reference", "model"))
    if {"model", "posthoc"} <= set(runs):
        goals["model TTFS / posthoc TTFT (goal <= 0.15)"] = _median(ratios("model", "posthoc", "ttfs", "ttft"))
    if "model" in runs:
        goals["upstream forwarded - minimum (goal 0), per prompt"] = [
            runs["model"][i][0]["upstream_forwarded"] - runs["model"][i][0]["upstream_minimum"] for i in range(len(prompts))
        ]
    if "identity" in runs:
        goals["identity: upstream forwarded - minimum, per prompt"] = [
            runs["identity"][i][0]["upstream_forwarded"] - runs["identity"][i][0]["upstream_minimum"] for i in range(len(prompts))
        ]
    out["goals"] = goals
    # Scaling: median per-sentence cost by sentence index, over prompts and repetitions.
    scaling: dict[str, Any] = {}
    for mode in ("identity", "model", "model-plain", "reference"):
        if mode not in runs:
            continue
        by_index: dict[int, list[dict]] = {}
        for rs in runs[mode]:
            for r in rs:
                for k, s in enumerate(r["per_sentence"]):
                    by_index.setdefault(k, []).append(s)
        scaling[mode] = [
            {
                "sentence": k,
                "upstream_ms_per_token": 1000 * _median([s["upstream_s"] / max(s["tokens"], 1) for s in v]),
                "aligner_ms": 1000 * _median([s["aligner_s"] for s in v]),
                "n": len(v),
            }
            for k, v in sorted(by_index.items())
        ]
    out["scaling"] = scaling
    return out


def markdown(report: dict) -> str:
    lines = ["| prompt | mode | seconds (median) | / plain | TTFS or TTFT (s) | sentences | changed | upstream fwd / min | aligner fed / forwards |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, entry in enumerate(report["per_prompt"]):
        for mode, m in entry["modes"].items():
            ratio = m.get("ratio_to_plain_median")
            first = m.get("ttfs_median", m.get("ttft_median"))
            fwd = f"{m['upstream_forwarded']} / {m['upstream_minimum']}" if "upstream_minimum" in m else str(m.get("upstream_forwarded", ""))
            dec = m.get("aligner_decoding")
            dec_s = f"{dec['fed_tokens']} / {dec['forwards']}" if dec else ""
            lines.append(
                f"| {i} | {mode} | {m['seconds_median']:.2f} | {'' if ratio is None else f'{ratio:.3f}'} | "
                f"{'' if first is None else f'{first:.2f}'} | {m.get('sentences', '')} | {m.get('changed', '')} | {fwd} | {dec_s} |"
            )
    lines.append("")
    for goal, value in report["goals"].items():
        lines.append(f"- {goal}: {value if isinstance(value, list) else f'{value:.3f}'}")
    return "\n".join(lines)


COLORS = {"identity": "tab:blue", "model": "tab:orange", "model-plain": "tab:green", "reference": "tab:red"}


def plot(scaling: dict, path: str) -> None:
    """The per-sentence costs of ``report["scaling"]`` (median over prompts and repetitions, by sentence index)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, rows in scaling.items():
        rows = [r for r in rows if r["n"] >= 2] or rows
        xs = [r["sentence"] + 1 for r in rows]
        ax1.plot(xs, [r["upstream_ms_per_token"] for r in rows], marker=".", label=mode, color=COLORS.get(mode))
        if mode != "identity":
            ax2.plot(xs, [r["aligner_ms"] for r in rows], marker=".", label=mode, color=COLORS.get(mode))
    ax1.set(title="upstream: ms per generated token, by sentence", xlabel="sentence", ylabel="ms / token")
    ax2.set(title="aligner: ms per sentence", xlabel="sentence", ylabel="ms")
    for ax in (ax1, ax2):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"[bench] plot: {path}")


if __name__ == "__main__":
    main()
