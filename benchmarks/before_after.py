"""``make bench`` for two versions of the code in one run: a git ref ("before") against another ("after", HEAD).

Each repetition runs ``benchmarks/speed.py`` once per version, as separate processes that alternate (before,
after; then after, before; ...), so the machine's noise and drift hit both alike. Every figure is the ratio that
``make bench`` reports (a mode against plain ``generate`` or against another mode *of the same process*), with
the median over prompts and repetitions; the two versions' ratios are then compared.

    python -m benchmarks.before_after --before 3a61184            # 3 repetitions x 3 prompts (~50 min on 2 cores)
    python -m benchmarks.before_after --before HEAD~4 --repeats 1 --prompts 1 --modes plain,identity,model
    python -m benchmarks.before_after --before 3a61184 --first after --json more.json   # balance the order ...
    python -m benchmarks.before_after --merge benchmarks/results/before_after.json more.json  # ... and pool both

Each version runs from a git worktree of its commit (created in the temporary directory when missing), never from
the working tree, so what is measured is exactly what was committed; both use the copy aligner ``make bench``
builds in ``$STREAM_ALIGNER_CACHE``. Results: ``benchmarks/results/before_after.json`` and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (name, numerator mode, denominator mode, key of the numerator, key of the denominator, better when)
RATIOS = [
    ("identity / plain", "identity", "plain", "seconds", "seconds", "lower"),
    ("model / plain", "model", "plain", "seconds", "seconds", "lower"),
    ("model-plain / plain", "model-plain", "plain", "seconds", "seconds", "lower"),
    ("reference / model", "reference", "model", "seconds", "seconds", "higher"),
    ("model TTFS / posthoc TTFT", "model", "posthoc", "ttfs_median", "ttft_median", "lower"),
]


def _rev(cwd: Path, ref: str) -> str:
    return subprocess.run(["git", "rev-parse", ref], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _worktree(ref: str) -> Path:
    """A worktree holding commit ``ref`` (reused when it exists; the copy aligner cache is shared through the
    environment)."""
    commit = _rev(ROOT, ref)
    tree = Path(tempfile.gettempdir()) / f"stream-aligner-{commit[:12]}"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
    if _rev(tree, "HEAD") != commit:
        raise SystemExit(f"{tree} does not hold {commit[:12]}")
    return tree


def _command(tree: Path, args: argparse.Namespace, json_path: Path, plot_path: Path) -> list[str]:
    """How to run ``speed.py`` in ``tree``: as a module where ``benchmarks`` is a package, else as a script."""
    flags = ["--repeats", "1", "--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens),
             "--modes", args.modes, "--json", str(json_path), "--plot", str(plot_path)]  # fmt: skip
    if (tree / "benchmarks" / "__init__.py").is_file():
        return [sys.executable, "-m", "benchmarks.speed", *flags]
    return [sys.executable, str(tree / "benchmarks" / "speed.py"), *flags]


def _run(tree: Path, args: argparse.Namespace, json_path: Path, plot_path: Path) -> dict[str, Any]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(tree / "src"), str(tree)]))
    t0 = time.perf_counter()
    res = subprocess.run(_command(tree, args, json_path, plot_path), cwd=tree, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-3000:] + res.stderr[-5000:])
        raise SystemExit(f"speed.py failed in {tree}")
    report = json.loads(json_path.read_text())
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    return report


def _ratios(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ratio: the values over every (repetition, prompt), and their median; plus the exactness checks."""
    out: dict[str, Any] = {}
    for name, num, den, key_num, key_den, better in RATIOS:
        values = []
        for report in reports:
            for entry in report["per_prompt"]:
                modes = entry["modes"]
                if num not in modes or den not in modes:
                    continue
                a = modes[num]["seconds"][0] if key_num == "seconds" else modes[num].get(key_num)
                b = modes[den]["seconds"][0] if key_den == "seconds" else modes[den].get(key_den)
                if a is not None and b:
                    values.append(a / b)
        if values:
            out[name] = {"median": statistics.median(values), "values": [round(v, 4) for v in values], "better": better}
    forwarded = {}
    for mode in ("identity", "model"):
        gaps = {
            entry["modes"][mode]["upstream_forwarded"] - entry["modes"][mode]["upstream_minimum"]
            for report in reports
            for entry in report["per_prompt"]
            if mode in entry["modes"] and "upstream_minimum" in entry["modes"][mode]
        }
        if gaps:
            forwarded[mode] = sorted(gaps)
    out["upstream forwarded - minimum"] = forwarded
    out["identity == plain tokens"] = all(
        entry.get("identity_equals_plain", True) for report in reports for entry in report["per_prompt"]
    )
    return out


def markdown(result: dict[str, Any]) -> str:
    before, after = result["before"]["ratios"], result["after"]["ratios"]
    lines = ["| figure (median over prompts x repetitions) | before | after | after / before | better is |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, *_rest, better in RATIOS:
        if name in before and name in after:
            b, a = before[name]["median"], after[name]["median"]
            lines.append(f"| {name} | {b:.3f} | {a:.3f} | {a / b:.3f} | {better} |")
    for key in ("upstream forwarded - minimum", "identity == plain tokens"):
        lines.append(f"| {key} | {before[key]} | {after[key]} | | |")
    return "\n".join(lines)


def merge(paths: list[str], out: str) -> int:
    """Pool the runs of several results of the same two commits (e.g. one started with each version)."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    first = results[0]
    for other in results[1:]:
        if (other["before"]["ref"], other["after"]["ref"]) != (first["before"]["ref"], first["after"]["ref"]):
            raise SystemExit("the results compare different commits")
    pooled = dict(first, repeats=sum(r["repeats"] for r in results), pooled_from=[str(p) for p in paths])
    for side in ("before", "after"):
        runs = [run for r in results for run in r[side]["runs"]]
        pooled[side] = {"ref": first[side]["ref"], "ratios": _ratios(runs), "runs": runs}
    Path(out).write_text(json.dumps(pooled, indent=1) + "\n")
    print(markdown(pooled))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="git ref of the version to compare with (e.g. a commit); required unless --merge")
    parser.add_argument("--after", default="HEAD", help="git ref of the new version (default: HEAD)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--modes", default="plain,identity,model,model-plain,reference,posthoc")
    parser.add_argument("--first", choices=("before", "after"), default="before", help="which version runs first in rep 0")
    parser.add_argument("--json", default=str(HERE / "results" / "before_after.json"))
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only pool the runs of earlier results into --json")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.json)
    if not args.before:
        parser.error("--before is required (unless --merge)")

    trees = {name: _worktree(ref) for name, ref in (("before", args.before), ("after", args.after))}
    refs = {name: _rev(tree, "HEAD") for name, tree in trees.items()}
    reports: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            order = ["before", "after"] if (rep % 2 == 0) == (args.first == "before") else ["after", "before"]
            for name in order:
                report = _run(trees[name], args, Path(tmp) / f"{name}-{rep}.json", Path(tmp) / f"{name}-{rep}.png")
                reports[name].append(report)
                print(f"[before/after] rep {rep} {name}: {report['wall_s']} s", flush=True)
    import torch

    result = {
        "before": {"ref": refs["before"], "ratios": _ratios(reports["before"]), "runs": reports["before"]},
        "after": {"ref": refs["after"], "ratios": _ratios(reports["after"]), "runs": reports["after"]},
        "repeats": args.repeats,
        "prompts": args.prompts,
        "modes": args.modes,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
