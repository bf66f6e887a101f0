"""The documentation's code runs as written: every ```python block of README.md and docs/*.md, from the repository
root, offline, on the embedded SmolLM2. The blocks of one page run in order in one namespace (a page is read top to
bottom: a later block may use what an earlier one defined). A block that cannot run here (it needs a server the page
starts, or trains for minutes on a model you bring) says so right above it, with the reason and where the same calls
are tested: ``<!-- not run: ... -->``. Every block that generates is greedy (``do_sample=False``) or says that it
samples, and bounds its length (``max_new_tokens``)."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.smollm2

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*(?P<marker>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def _blocks(page):
    """``(code, reason_not_run or None)`` for each python block of ``page``, in order."""
    out = []
    for m in BLOCK.finditer((ROOT / page).read_text(encoding="utf-8")):
        marker = m.group("marker") or ""
        reason = marker.split(":", 1)[1].strip() if marker.startswith("not run:") else None
        out.append((m.group("code"), reason))
    return out


BLOCKS = {page: _blocks(page) for page in PAGES}
RUNNABLE = [page for page, blocks in BLOCKS.items() if any(reason is None for _, reason in blocks)]


def test_every_python_block_runs_or_says_why_not():
    assert len(RUNNABLE) >= 2 and sum(len(b) for b in BLOCKS.values()) >= 12
    for page, blocks in BLOCKS.items():
        for _code, reason in blocks:
            if reason is not None:
                assert len(reason) > 20 and "test" in reason, f"{page}: say why the block does not run and what tests it"


def test_every_generating_block_is_greedy_or_says_it_samples_and_bounds_its_length():
    for page, blocks in BLOCKS.items():
        for code, _ in blocks:
            if re.search(r"\.generate\(|\bpipe\(|completions\.create\(|stream_aligned_completion\(", code):
                assert "do_sample=False" in code or "samples" in code or "completions.create" in code, (page, code[:200])
                assert "max_new_tokens" in code or "max_tokens" in code, (page, code[:200])


@pytest.mark.parametrize("page", RUNNABLE)
def test_page_runs(page, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": f"docs_{Path(page).stem}"}
    ran = 0
    for i, (code, reason) in enumerate(BLOCKS[page]):
        if reason is not None:
            continue
        exec(compile(code, f"{page} block {i + 1}", "exec"), namespace)  # noqa: S102 - the documentation's own code
        ran += 1
    printed = capsys.readouterr().out
    assert ran and printed.strip(), "the page's code printed nothing"
    if page == "docs/quickstart.md":
        assert printed.count("391") >= 6  # 17*23, checked by the aligner in each route's snippet
