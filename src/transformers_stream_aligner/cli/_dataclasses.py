"""Turning a parsed namespace back into the dataclasses its flags were generated from."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_namespace(namespace: argparse.Namespace, dtype: type[T], **overrides: Any) -> T:
    """An instance of the dataclass ``dtype`` from the namespace's values of its init fields (as
    ``HfArgumentParser.parse_args_into_dataclasses`` builds it), with ``overrides`` applied."""
    names = {f.name for f in dataclasses.fields(dtype) if f.init}
    values = {name: value for name, value in vars(namespace).items() if name in names}
    values.update(overrides)
    return dtype(**values)
