"""The documentation's snippets run as written: every ```python block of docs/quickstart.md that follows a
``<!-- runs: tests/test_docs.py -->`` marker, from the repository root, in a fresh namespace."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- runs: tests/test_docs.py -->"


def _snippets(name):
    text = (ROOT / "docs" / name).read_text(encoding="utf-8")
    found = re.findall(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.S)
    headings = [h for h in re.findall(r"^#+ (.*)$", text, flags=re.M)]
    return found, headings


SNIPPETS, _ = _snippets("quickstart.md")


def test_the_route_sections_are_marked():
    # one runnable snippet per route: patch, mixin, custom_generate folder and callable, pipelines, streamers
    assert len(SNIPPETS) >= 6


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_quickstart_snippet_runs(index, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = compile(SNIPPETS[index], f"docs/quickstart.md snippet {index + 1}", "exec")
    exec(code, {"__name__": f"quickstart_{index}"})  # noqa: S102 - the documentation's own code
    printed = capsys.readouterr().out
    assert printed.strip(), "the snippet printed nothing"
    assert "391" in printed  # 17*23, checked by the aligner
