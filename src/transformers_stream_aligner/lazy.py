"""Names a package hands out from its modules on first use (PEP 562), as transformers does, so that importing the
package (and ``stream-aligner --help``) stays quick: torch and transformers load when a name that needs them is first
touched.

Example:

    >>> import types
    >>> package = types.ModuleType("pkg")
    >>> package.__getattr__, package.__dir__ = lazy_exports("json", {"JSONEncoder": "encoder"}, vars(package))
    >>> package.JSONEncoder().encode([1]), "JSONEncoder" in vars(package)
    ('[1]', True)
    >>> package.missing
    Traceback (most recent call last):
    ...
    AttributeError: module 'json' has no attribute 'missing'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` (its ``__name__``), whose public name ``n`` lives in its module
    ``exports[n]`` (relative to the package). A name, once imported, becomes a plain attribute of ``namespace`` (the
    package's ``globals()``), which is **mutated**."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
