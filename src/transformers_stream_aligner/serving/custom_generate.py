"""The ``custom_generate`` folder: stream alignment for a model that nobody patched, through transformers' own route
for decoding methods, and for servers that load a model directory (``transformers serve``).

1. **A folder** (Hub repo or local directory) with ``custom_generate/generate.py``, which re-exports :func:`generate`
   (``stream-aligner export-custom-generate DIR`` writes it; :func:`export_custom_generate`)::

       model.generate(**inputs, custom_generate="DIR or org/repo", trust_remote_code=True, aligner=aligner, tokenizer=tok)

2. **A model directory carrying that folder**, loaded with ``from_pretrained(DIR, trust_remote_code=True)``:
   transformers makes :func:`generate` the model's ``generate``, so pipelines and ``transformers serve`` run it. A
   call without ``aligner=`` uses the server's aligner (:class:`~.served_aligners.ServingConfig`), else it is plain
   ``generate``.

Both run :func:`~..generation.generate.stream_aligned_generate`. The third form, the callable
``custom_generate=stream_aligned_decoding``, is :mod:`..generation.custom_generate`.

Remote code and consent: both forms execute ``custom_generate/generate.py``. transformers before
:data:`MIN_TRANSFORMERS_VERSION` ran a *local* directory's file without ``trust_remote_code`` (CVE-2026-80047,
fixed by transformers PR #46483); the folder's ``requirements.txt`` asks for that version and :func:`generate` refuses
to run under an older one.
"""

from __future__ import annotations

import copy
import functools
import shutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import transformers
from packaging.version import Version
from transformers import GenerationMixin

from ..generation.mixin import generate_with_aligner
from ..runtime.streamers import StreamerDriver
from .served_aligners import SERVING_CONFIG_NAME, ServingConfig, load_served_aligner

__all__ = ["MIN_TRANSFORMERS_VERSION", "SERVED_ALIGNER_FIELD", "check_transformers_version", "export_custom_generate", "generate"]

#: The first transformers release that asks for ``trust_remote_code`` before running a local directory's
#: ``custom_generate/generate.py`` (earlier ones ran it without consent: CVE-2026-80047, transformers PR #46483).
MIN_TRANSFORMERS_VERSION = "5.12.0"

# Keyword names of transformers' generate() that its string route passes even when the caller did not.
_STOCK_ARGUMENTS = (
    "inputs",
    "generation_config",
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "synced_gpus",
    "assistant_model",
    "streamer",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
)
# What a served request may set in its generation_config to pick one of the server's aligners.
SERVED_ALIGNER_FIELD = "stream_aligner"


def check_transformers_version(version: str | None = None) -> None:
    """Raise ``ImportError`` when ``transformers`` (or ``version``) is older than :data:`MIN_TRANSFORMERS_VERSION`.

    Example:

        >>> check_transformers_version("5.11.0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ImportError: transformers 5.11.0 runs a local custom_generate/generate.py without trust_remote_code ...
    """
    version = version or transformers.__version__
    if Version(version) < Version(MIN_TRANSFORMERS_VERSION):
        raise ImportError(
            f"transformers {version} runs a local custom_generate/generate.py without trust_remote_code "
            f"(CVE-2026-80047); stream alignment's custom_generate needs transformers>={MIN_TRANSFORMERS_VERSION}: "
            f'pip install "transformers>={MIN_TRANSFORMERS_VERSION}"'
        )


# ---------------------------------------------------------------------------------------------- the folder's generate
def generate(*args: Any, model: Any, **kwargs: Any) -> Any:
    """``generate`` for a model that runs the package's ``custom_generate`` folder (forms 1 and 2 of the module).

    transformers calls it with ``model=`` (the string route) or as the model's ``generate`` with ``model`` bound by
    keyword (a model directory loaded with ``trust_remote_code=True``), so positional arguments are ``generate``'s.
    Takes ``generate``'s arguments plus the aligner's (``aligner=``, ``tokenizer=``, ``aligner_question=``, ...: see
    :func:`~..generation.generate.stream_aligned_generate`). Without ``aligner=`` it uses the aligner the server configured
    for this model (:meth:`ServingConfig.for_model`; a request may name one of its aligners with
    ``generation_config.stream_aligner``), and with none it is transformers' ``generate``.
    """
    for name in _STOCK_ARGUMENTS:  # the string route passes every named argument, None when not given
        if name in kwargs and kwargs[name] is None:
            del kwargs[name]
    if kwargs.get("aligner") is None:
        kwargs.pop("aligner", None)
        try:
            kwargs["generation_config"], served = _served_aligner_name(kwargs.get("generation_config"), kwargs)
            aligner = _served_aligner(model, served)
        except BaseException as error:  # a name the server does not offer: the streamer still ends
            StreamerDriver(kwargs.get("streamer")).abort(error)
            raise
        if kwargs["generation_config"] is None:
            del kwargs["generation_config"]
        if aligner is not None:
            kwargs["aligner"] = aligner
    return generate_with_aligner(model, functools.partial(GenerationMixin.generate, model), args, kwargs)


def _served_aligner_name(generation_config: Any, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
    """The aligner name a request chose (``generation_config.stream_aligner`` or ``stream_aligner=``), and the
    config without it (a copy: the caller's is not mutated). Pops ``stream_aligner`` from ``kwargs`` (**mutated**)."""
    name = kwargs.pop(SERVED_ALIGNER_FIELD, None)
    if generation_config is not None and getattr(generation_config, SERVED_ALIGNER_FIELD, None) is not None:
        generation_config = copy.deepcopy(generation_config)
        name = getattr(generation_config, SERVED_ALIGNER_FIELD)
        delattr(generation_config, SERVED_ALIGNER_FIELD)
    return generation_config, name


def _served_aligner(model: Any, name: str | None) -> Any:
    serving = ServingConfig.for_model(model)
    if serving is None:
        if name is not None:
            raise ValueError(
                f"aligner {name!r} was requested, but this server offers no aligners (no {SERVING_CONFIG_NAME} in the "
                "model directory and no STREAM_ALIGNER_SERVING_CONFIG)"
            )
        return None
    spec = serving.spec_for(name)
    return None if spec is None else load_served_aligner(spec, serving.trust_remote_code)


# ---------------------------------------------------------------------------------------------- writing the folder
def export_custom_generate(
    directory: str | Path,
    *,
    aligners: Mapping[str, str] | None = None,
    default_aligner: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the Hub-ready ``custom_generate`` folder into ``directory`` (created if needed): ``README.md`` (tagged
    ``custom_generate``), ``custom_generate/generate.py`` and ``custom_generate/requirements.txt``. With
    ``aligners`` (name -> directory, Hub repo id or ``module:attribute``) it also writes ``stream_aligner_serving.json``
    (the server's aligners, :class:`ServingConfig`). ``directory`` may be a model directory (form 2; its own
    ``README.md`` is kept) or a folder of its own, to push as a repo (form 1). Existing files are an error unless
    ``overwrite``. Returns ``directory``.

    Example:

        >>> import tempfile, os
        >>> out = export_custom_generate(tempfile.mkdtemp())
        >>> sorted(os.listdir(out)), sorted(os.listdir(out / "custom_generate"))
        (['README.md', 'custom_generate'], ['generate.py', 'requirements.txt'])
    """
    directory = Path(directory)
    serving = ServingConfig(aligners=dict(aligners or {}), default=default_aligner) if aligners else None
    if default_aligner is not None and serving is None:
        raise ValueError("default_aligner needs aligners")
    template = resources.files("transformers_stream_aligner") / "custom_generate_template"
    files = {
        "README.md": template / "README.md",
        "custom_generate/generate.py": template / "custom_generate" / "generate.py",
        "custom_generate/requirements.txt": template / "custom_generate" / "requirements.txt",
    }
    if (directory / "README.md").exists() and not overwrite:
        del files["README.md"]  # a model directory's own card is kept
    targets = [directory / name for name in files] + ([directory / SERVING_CONFIG_NAME] if serving else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist(s); pass overwrite=True (--overwrite) to replace")
    (directory / "custom_generate").mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        with resources.as_file(source) as path:
            shutil.copyfile(path, directory / name)
    if serving is not None:
        serving.to_json_file(directory / SERVING_CONFIG_NAME)
    return directory
