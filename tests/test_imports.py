"""The package and its command import lazily: ``stream-aligner --help`` and ``import transformers_stream_aligner``
load neither torch nor transformers; every public name still resolves."""

import importlib
import subprocess
import sys

import pytest

import transformers_stream_aligner
from transformers_stream_aligner._moved import MOVED, MOVED_NAMES


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint('LOADED:', *(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.rsplit("LOADED:", 1)[1].split())


def test_help_and_version_import_nothing_heavy():
    code = "from transformers_stream_aligner.cli import main\nfor argv in (['--help'], ['--version']):\n" \
           "    try:\n        main(argv)\n    except SystemExit:\n        pass"  # fmt: skip
    assert _modules_after(code) == set()
    assert _modules_after("import transformers_stream_aligner") == set()


def test_help_lists_every_command_and_a_command_still_gets_its_full_parser(capsys):
    from transformers_stream_aligner.cli import COMMANDS, main

    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    with pytest.raises(SystemExit):
        main(["build-dataset", "--help"])
    assert "--corrector" in capsys.readouterr().out  # generated from the command's dataclass
    with pytest.raises(SystemExit) as caught:
        main(["no-such-command"])
    assert caught.value.code == 2


@pytest.mark.parametrize("name", transformers_stream_aligner.__all__)
def test_every_public_name_resolves(name):
    assert getattr(transformers_stream_aligner, name) is not None
    assert name in dir(transformers_stream_aligner)


def test_tests_that_do_not_test_the_examples_never_import_them():
    """Only tests/examples/ (and the vLLM tier, which serves the shipped aligner) import ``examples``; elsewhere the one
    way in is conftest.py's SmolLM2 fixtures, which import the loader when a test asks for the model."""
    import ast
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    allowed = {("conftest.py", "smollm2_path"), ("conftest.py", "smollm2")}
    found = []
    for path in sorted(tests.rglob("*.py")):
        rel = path.relative_to(tests)
        if rel.parts[0] in ("examples", "vllm"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes = {node: node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        for scope, name in [(tree, None), *scopes.items()]:
            for node in ast.iter_child_nodes(scope) if scope is tree else ast.walk(scope):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
                if any(m == "examples" or m.startswith("examples.") for m in modules) and (str(rel), name) not in allowed:
                    found.append(f"{rel}:{node.lineno} ({name or 'module level'})")
    assert not found, found


@pytest.mark.parametrize("old", [*sorted(MOVED), "engines.vllm_engine", "engines.base"])
def test_an_old_module_path_gives_the_new_module_with_a_deprecation_warning(old):
    """Modules moved into subpackages keep their old paths for one release (``_moved.py``): the same module object,
    with a DeprecationWarning that names the new path."""
    name = f"transformers_stream_aligner.{old}"
    head, _, rest = old.partition(".")
    new_name = f"transformers_stream_aligner.{MOVED[head]}{'.' + rest if rest else ''}"
    new = importlib.import_module(new_name)
    sys.modules.pop(name, None)  # imported before (in this process): import it afresh
    with pytest.warns(DeprecationWarning, match=f"{name} has moved to {new_name}"):
        module = importlib.import_module(name)
    if old in MOVED_NAMES:  # names left the module: the old path hands out both
        assert all(getattr(module, n) is getattr(new, n) for n in new.__all__)
        assert all(getattr(module, n) is getattr(importlib.import_module(f"transformers_stream_aligner.{where}"), n)
                   for n, where in MOVED_NAMES[old].items())  # fmt: skip
    else:
        assert module is new


def test_the_entry_subpackages_keep_their_names():
    """``generation`` and ``training`` were modules and are subpackages now: their public names still import."""
    from transformers_stream_aligner.generation import enable_stream_alignment, stream_aligned_generate
    from transformers_stream_aligner.training import TrainingResult, train_aligner

    assert enable_stream_alignment is transformers_stream_aligner.enable_stream_alignment
    assert stream_aligned_generate is transformers_stream_aligner.stream_aligned_generate
    assert train_aligner is transformers_stream_aligner.train_aligner and TrainingResult is not None
