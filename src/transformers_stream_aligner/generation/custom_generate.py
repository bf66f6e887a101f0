"""transformers' own route for decoding methods, ``custom_generate``: stream alignment on a model nobody patched.

Three forms, all running :func:`~.generation.stream_aligned_generate`:

1. **A folder** (Hub repo or local directory) with ``custom_generate/generate.py``, which re-exports :func:`generate`
   (``stream-aligner export-custom-generate DIR`` writes it; :func:`export_custom_generate`)::

       model.generate(**inputs, custom_generate="DIR or org/repo", trust_remote_code=True, aligner=aligner, tokenizer=tok)

2. **A model directory carrying that folder**, loaded with ``from_pretrained(DIR, trust_remote_code=True)``:
   transformers makes :func:`generate` the model's ``generate``, so pipelines and ``transformers serve`` run it. A
   call without ``aligner=`` uses the server's aligner (:class:`~.serving_config.ServingConfig`), else it is plain
   ``generate``.

3. **The callable** :func:`stream_aligned_decoding`, in place of transformers' sampling loop::

       model.generate(**inputs, custom_generate=stream_aligned_decoding, aligner=aligner)

Remote code and consent: forms 1 and 2 execute ``custom_generate/generate.py``. transformers before
:data:`MIN_TRANSFORMERS_VERSION` ran a *local* directory's file without ``trust_remote_code`` (CVE-2026-80047,
fixed by transformers PR #46483); the folder's ``requirements.txt`` asks for that version and :func:`generate` refuses
to run under an older one.
"""

from __future__ import annotations

import copy
import functools
import inspect
import shutil
import sys
from collections import Counter
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import GenerationMixin, LogitsProcessorList, StoppingCriteriaList

from ..compat import cache_length, generate_cache_key, generate_code, pop_cache
from ..runtime.streamers import StreamerDriver
from ..serving.served_aligners import SERVING_CONFIG_NAME, ServingConfig, load_served_aligner
from .generate import _ALIGNER_KWARGS, _generate_or_align, stream_aligned_generate

__all__ = [
    "MIN_TRANSFORMERS_VERSION",
    "check_transformers_version",
    "export_custom_generate",
    "generate",
    "stream_aligned_decoding",
]

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


# ---------------------------------------------------------------------------------------------- forms 1 and 2
def generate(*args: Any, model: Any, **kwargs: Any) -> Any:
    """``generate`` for a model that runs the package's ``custom_generate`` folder (forms 1 and 2 of the module).

    transformers calls it with ``model=`` (the string route) or as the model's ``generate`` with ``model`` bound by
    keyword (a model directory loaded with ``trust_remote_code=True``), so positional arguments are ``generate``'s.
    Takes ``generate``'s arguments plus the aligner's (``aligner=``, ``tokenizer=``, ``aligner_question=``, ...: see
    :func:`~.generation.stream_aligned_generate`). Without ``aligner=`` it uses the aligner the server configured
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
    return _generate_or_align(model, functools.partial(GenerationMixin.generate, model), args, kwargs)


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


# ---------------------------------------------------------------------------------------------- form 3
def stream_aligned_decoding(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: Any,
    **kwargs: Any,
) -> Any:
    """Stream alignment as the decoding method of transformers' ``generate``: pass it as ``custom_generate=``.

    ``generate`` prepares the inputs and the generation config (with its own warnings), then calls this in place of
    its sampling loop, with the keywords this function declares (``aligner=`` ...). Without ``aligner=`` it is
    transformers' sampling loop.

    What ``generate`` (transformers 5.x) does not pass to a callable, and how this gets it:

    * ``tokenizer=``: dropped; bind it (``custom_generate=functools.partial(stream_aligned_decoding, tokenizer=tok)``),
      or let it be found: a ``pipeline``'s, the one given to ``enable_stream_alignment``, or the model's own
      (``AutoTokenizer.from_pretrained(model.name_or_path)``).
    * ``streamer=``: ``generate`` puts the prompt into it and then drops it; it is taken from that ``generate``
      call, receives the corrected sentences and is ended.
    * the logits processors and stopping criteria arrive merged with those of the generation config; the ones the
      caller added are found by comparing with what the config alone gives, and run in every round.

    Example:

        >>> from transformers_stream_aligner import stream_aligned_decoding
        >>> model.generate(**inputs, custom_generate=stream_aligned_decoding, aligner=fn, max_new_tokens=50)  # doctest: +SKIP
    """
    streamer = _streamer_of_calling_generate(model)
    aligner_kwargs = {name: kwargs.pop(name) for name in (*_ALIGNER_KWARGS, "tokenizer") if name in kwargs}
    model_kwargs = kwargs
    if aligner_kwargs.get("aligner") is None:
        return GenerationMixin._sample(
            model, input_ids, logits_processor, stopping_criteria, generation_config, streamer=streamer, **model_kwargs
        )
    cache = pop_cache(model_kwargs)
    if cache_length(cache) > 0:
        model_kwargs[generate_cache_key()] = cache  # the caller's prefilled cache; an empty one generate made is dropped
    for name in ("position_ids", "logits_to_keep", "use_cache", "cache_position"):
        model_kwargs.pop(name, None)
    config = copy.deepcopy(generation_config)
    # generate turned max_new_tokens/min_new_tokens into absolute lengths and warned; keep the new-token forms
    if config.max_new_tokens is not None:
        config.max_length = None
    if config.min_new_tokens is not None:
        config.min_length = None
    return stream_aligned_generate(
        model,
        input_ids,
        **aligner_kwargs,
        generation_config=config,
        logits_processor=_added(logits_processor, _config_processors(model, generation_config, input_ids, model_kwargs)),
        stopping_criteria=_added(stopping_criteria, model._get_stopping_criteria(generation_config, StoppingCriteriaList())),
        streamer=StreamerDriver(streamer, prompt_sent=True),
        **model_kwargs,
    )


def _decoding_signature() -> inspect.Signature:
    """``stream_aligned_decoding``'s own parameters, then the aligner keywords of ``generate`` (and ``tokenizer``)
    as keyword-only: transformers routes to a ``custom_generate`` callable the keywords its signature names."""
    own = inspect.signature(stream_aligned_decoding).parameters
    aligned = inspect.signature(stream_aligned_generate).parameters
    names = (*_ALIGNER_KWARGS, "tokenizer")
    extra = [aligned[name].replace(kind=inspect.Parameter.KEYWORD_ONLY) for name in names]
    extra[0] = extra[0].replace(default=None)  # aligner: without it, transformers' sampling loop
    positional = [p for p in own.values() if p.kind is not p.VAR_KEYWORD]
    return inspect.Signature([*positional, *extra, own["kwargs"]])


stream_aligned_decoding.__signature__ = _decoding_signature()  # type: ignore[attr-defined]


def _config_processors(model: Any, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[Any]:
    return model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=input_ids.shape[1],
        encoder_input_ids=input_ids,
        prefix_allowed_tokens_fn=None,
        logits_processor=LogitsProcessorList(),
        device=input_ids.device,
        model_kwargs=model_kwargs,
    )


def _added(merged: Any, from_config: Any) -> list[Any]:
    """The items of ``merged`` beyond those ``from_config`` has (by type, in order): what the caller added."""
    left = Counter(type(item) for item in from_config or [])
    added = []
    for item in merged or []:
        if left[type(item)] > 0:
            left[type(item)] -= 1
        else:
            added.append(item)
    return added


def _streamer_of_calling_generate(model: Any) -> Any:
    """The ``streamer`` argument of the transformers ``generate`` call that called this decoding method (it
    ``put`` the prompt, and would leave the streamer unended), or ``None``."""
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            return None
        if frame.f_code is generate_code() and frame.f_locals.get("self") is model:
            return frame.f_locals.get("streamer")
        frame = frame.f_back
    return None


# ---------------------------------------------------------------------------------------------- the folder
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
