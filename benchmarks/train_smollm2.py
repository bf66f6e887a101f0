"""A real training run on CPU: SmolLM2-135M-Instruct as the base, a few hundred on-policy records.

1. ``stream-aligner build-dataset`` (on-policy): SmolLM2 answers seeded arithmetic questions with stream
   alignment; a small exact corrector (below) fixes ``a op b = c`` claims; every sentence is recorded.
2. ``stream-aligner train``: full fine-tuning and LoRA (r=16, all linear layers), reference recipe
   (3 epochs, lr 2e-5 for full / 2e-4 for LoRA, cosine, warm-up 0.03, batch 8), float32 on CPU.
3. The trained aligners load with ``StreamAligner.from_pretrained`` and correct a held-out sentence.

Each step runs as its own process; wall time and peak RSS (``ru_maxrss`` of the child) are recorded
in ``benchmarks/results/train_smollm2.json``. Usage (from the repository root):
``python -m benchmarks.train_smollm2 [--questions 80]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# "a op b = c", where c is not itself the start of another operation ("27*93 = 27*94" is left alone)
_CLAIM = re.compile(r"(?<![\d.])(\d+)\s*([+\-*x×/÷])\s*(\d+)\s*=\s*(-?\d+(?:\.\d+)?)\b(?!\s*[+\-*x×/÷]\s*\d)")


def fix_arithmetic(question: str, prefix: str, last: str) -> str:
    """Recompute the result of every ``a op b = c`` claim in the sentence (a stand-in corrector); only ``c``
    changes, the rest of the sentence is kept as written."""
    out, end = [], 0
    for m in _CLAIM.finditer(last):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        if op in "/÷":
            if b == 0:
                continue
            value = a / b
            text = str(int(value)) if value == int(value) else f"{value:.2f}".rstrip("0")
        else:
            text = str({"+": a + b, "-": a - b}.get(op, a * b))
        out.append(last[end : m.start(4)] + text)
        end = m.end(4)
    return "".join(out) + last[end:]


def questions(n: int, seed: int = 42) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(["+", "-", "*", "*"])
        out.append(rng.choice([f"What is {a}{op}{b}?", f"Compute {a} {op} {b} and explain briefly.", f"How much is {a} {op} {b}?"]))
    return out


_WRAPPER = (
    "import resource, sys\n"
    "from transformers_stream_aligner.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def timed(args: list[str], env: dict) -> dict:
    """Run ``stream-aligner <args>`` in a fresh process; its wall time and its own peak RSS."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _WRAPPER, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-3000:] + res.stderr[-5000:])
        raise SystemExit(f"failed: stream-aligner {' '.join(args)}")
    lines = res.stdout.strip().splitlines()
    peak_kib = int(next(line.split()[1] for line in lines if line.startswith("PEAK_RSS_KIB")))
    report = [line for line in lines if line.startswith("[stream-aligner]")]
    print("\n".join(report), flush=True)
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(peak_kib / 1024), "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=80)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--epochs", default="3")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="train-smollm2-"))
    work.mkdir(parents=True, exist_ok=True)
    from examples.smollm2 import smollm2_checkpoint

    smollm2 = str(smollm2_checkpoint())
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    (work / "questions.txt").write_text("\n".join(questions(args.questions)) + "\n")
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "questions": args.questions}
    data = work / "records.jsonl"
    results["build_dataset"] = timed(
        ["build-dataset", "--questions", str(work / "questions.txt"), "--upstream", smollm2,
         "--corrector", "benchmarks.train_smollm2:fix_arithmetic",
               "--output", str(data), "--overwrite", "--max-new-tokens", "96", "--batch-size", "8", "--no-progress"],
        env,
    )  # fmt: skip
    records = [json.loads(line) for line in data.read_text().splitlines()]
    results["records"] = len(records)
    results["changed_records"] = sum(r["correction"] != r["last"] for r in records)
    common = ["train", "--base-model", smollm2, "--train-file", str(data), "--num-train-epochs", args.epochs,
              "--per-device-train-batch-size", "8", "--max-length", "512", "--no-progress", "--overwrite-output-dir"]  # fmt: skip
    results["full"] = timed(common + ["--output-dir", str(work / "full")], env)
    results["lora"] = timed(
        common + ["--output-dir", str(work / "lora"), "--lora", "--learning-rate", "2e-4"], env
    )
    check = (
        "import json; from transformers_stream_aligner import StreamAligner, AlignmentRequest as R\n"
        "req = [R('What is 17*23?', '', '17*23 = 381.'), R('How much is 45 + 19?', 'Let me add them.', '45 + 19 = 64.')]\n"
        f"print(json.dumps({{d: StreamAligner.from_pretrained('{work}/' + d).correct(req) for d in ('full', 'lora')}}))"
    )
    res = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
    results["held_out_corrections"] = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else res.stderr[-2000:]
    results["sizes_mib"] = {
        d: round(sum(f.stat().st_size for f in (work / d).iterdir()) / 2**20, 1) for d in ("full", "lora")
    }
    out = HERE / "results" / "train_smollm2.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
