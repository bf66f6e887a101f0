"""The package's house rules (docs/design.md, "The tree"): its layers and the absence of import cycles (import-linter's
contracts in pyproject.toml, the command `lint-imports`), no private name taken from another folder, and files small
enough to read whole."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "transformers_stream_aligner"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "custom_generate_template" not in p.parts)


def _imports(path):
    """``(module it names, names imported)`` for every ``from ... import`` of ``path`` inside the package."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = here[:-1] if path.name != "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = (*base, *(node.module.split(".") if node.module else ()))
            elif node.module and node.module.split(".")[0] == PACKAGE.name:
                target = tuple(node.module.split("."))
            else:
                continue
            yield target, [alias.name for alias in node.names], node.lineno


def test_import_contracts_hold():
    """`lint-imports`: the layers (cli; serving | training; generation; aligners; runtime; shared modules) and no
    cycle among the modules of any folder."""
    command = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(command)], capture_output=True, text=True, cwd=PACKAGE.parent.parent, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_no_private_name_is_imported_from_another_folder():
    found = []
    for path in MODULES:
        folder = path.parent
        for target, names, line in _imports(path):
            target_path = PACKAGE.parent.joinpath(*target)
            target_folder = target_path if target_path.is_dir() else target_path.parent
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private_module = any(part.startswith("_") and not part.startswith("__") for part in target[1:])
            if (private or private_module) and target_folder != folder and target != (PACKAGE.name, "_moved"):
                found.append(f"{path.relative_to(PACKAGE)}:{line} imports {private or '.'.join(target)}")
    assert not found, found


def test_every_module_is_small_enough_to_read_whole():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines()) for p in MODULES}
    assert {name: n for name, n in sizes.items() if n > 500} == {}
