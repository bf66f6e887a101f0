"""`ServingConfig`: which aligners a server may load, chosen by its operator, never by a request.

A model directory served through ``transformers serve`` (or any server that loads it with
``trust_remote_code=True``) runs the package's ``custom_generate`` in place of ``generate``. Which aligner it uses is
the server's choice: a ``stream_aligner_serving.json`` file in the model directory, or the file named by the
``STREAM_ALIGNER_SERVING_CONFIG`` environment variable (which wins). A request may pick one of the configured
names (``generation_config: {"stream_aligner": "<name>"}``), nothing else: it can never make the server load a
path or repo of its choosing.

Example:

    >>> config = ServingConfig(aligners={"arith": "path/to/aligner"}, default="arith")
    >>> config.spec_for(None), config.spec_for("arith")
    ('path/to/aligner', 'path/to/aligner')
    >>> config.spec_for("/etc/passwd")
    Traceback (most recent call last):
    ...
    ValueError: aligner '/etc/passwd' is not one this server offers (offered: 'arith')
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SERVING_CONFIG_ENV", "SERVING_CONFIG_NAME", "ServingConfig"]

#: The file, in a served model directory, that names its aligners.
SERVING_CONFIG_NAME = "stream_aligner_serving.json"
#: An environment variable naming such a file; it takes precedence over the model directory's.
SERVING_CONFIG_ENV = "STREAM_ALIGNER_SERVING_CONFIG"


@dataclass
class ServingConfig:
    """The aligners a server offers.

    Attributes:
        aligners: name -> spec: a checkpoint directory or Hub repo id (loaded with
            :meth:`~.aligner.StreamAligner.from_pretrained`, safetensors only), or ``"module:attribute"`` (a function
            or an object with ``correct``, imported). Relative directories are resolved against the file's directory.
        default: the name used when a request names none (``None``: such requests are plain generation).
        trust_remote_code: passed to ``from_pretrained`` for the aligners (off unless the operator turns it on).
    """

    aligners: dict[str, str] = field(default_factory=dict)
    default: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.aligners, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in self.aligners.items()
        ):
            raise ValueError("aligners must map names to non-empty strings (a directory, a Hub repo id or module:attr)")
        if self.default is not None and self.default not in self.aligners:
            raise ValueError(f"default aligner {self.default!r} is not one of the aligners ({self._offered()})")
        if not isinstance(self.trust_remote_code, bool):
            raise ValueError("trust_remote_code must be true or false")

    def _offered(self) -> str:
        return ", ".join(repr(name) for name in sorted(self.aligners)) or "none"

    def spec_for(self, name: str | None) -> str | None:
        """The spec of aligner ``name`` (``None``: the default), or ``None`` for plain generation. Raises
        ``ValueError`` for a name the configuration does not offer."""
        if name is None:
            return self.aligners[self.default] if self.default is not None else None
        if not isinstance(name, str) or name not in self.aligners:
            raise ValueError(f"aligner {name!r} is not one this server offers (offered: {self._offered()})")
        return self.aligners[name]

    # ------------------------------------------------------------------ files
    def to_json_file(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ServingConfig:
        """Read ``path``; relative aligner directories are resolved against its directory. Unknown keys are warned
        about, as in :class:`~.stream_aligner_config.StreamAlignerConfig`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the serving configuration {path}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the serving configuration must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{path}: unknown serving configuration keys ignored: {unknown}", UserWarning, stacklevel=2)
        try:
            config = cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err
        base = path.parent
        for name, spec in config.aligners.items():
            if ":" not in spec and not os.path.isabs(spec) and (base / spec).exists():
                config.aligners[name] = str((base / spec).resolve())
        return config

    @classmethod
    def for_model(cls, model: Any) -> ServingConfig | None:
        """The configuration for a served ``model``: the file named by ``STREAM_ALIGNER_SERVING_CONFIG``, else
        ``stream_aligner_serving.json`` in the model's own directory (``model.name_or_path``, when it is a local
        directory), else ``None``."""
        named = os.environ.get(SERVING_CONFIG_ENV)
        if named:
            return cls.from_json_file(named)
        directory = getattr(model, "name_or_path", None)
        if isinstance(directory, str) and directory and os.path.isfile(os.path.join(directory, SERVING_CONFIG_NAME)):
            return cls.from_json_file(os.path.join(directory, SERVING_CONFIG_NAME))
        return None


_LOADED: dict[tuple[str, bool], Any] = {}
_LOADING = threading.Lock()


def load_served_aligner(spec: str, trust_remote_code: bool = False) -> Any:
    """The aligner for ``spec``, loaded once per process (aligners are shareable across threads)."""
    from ..aligners.specs import load_aligner

    key = (spec, trust_remote_code)
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = load_aligner(spec, trust_remote_code=trust_remote_code)
        return _LOADED[key]
