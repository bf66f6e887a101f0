"""An aligner named by a string, as a command line or a server's configuration names it: ``module:attribute`` (a
function or an object with ``correct``) or a checkpoint directory / Hub repo id."""

from __future__ import annotations

import os
from typing import Any

from .model import StreamAligner

__all__ = ["load_aligner"]


def load_aligner(spec: str, *, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """An aligner named by ``spec``: ``"module:attribute"`` (a function ``fn(question, prefix, last)`` or an object
    with ``correct``, imported), else a checkpoint directory or Hub repo id for :meth:`StreamAligner.from_pretrained`
    (``kwargs`` go there; safetensors only). Python code is imported only from a ``module:attribute`` spec, which the
    caller (an operator's command line or server configuration, never a request) chose.

    Example:

        >>> load_aligner("textwrap:dedent")  # doctest: +ELLIPSIS
        <function dedent at ...>
    """
    if ":" in spec and not os.path.exists(spec):
        import importlib

        module_name, _, attr = spec.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    return StreamAligner.from_pretrained(spec, trust_remote_code=trust_remote_code, **kwargs)
