"""Loading and saving an aligner checkpoint (the Hub I/O of :class:`~.model.StreamAligner`): a full checkpoint, a LoRA
adapter on the base it names or on a model you pass (one copy of the weights, :mod:`.adapter`), safetensors only;
``trust_remote_code`` off unless passed. :meth:`StreamAligner.from_pretrained` and :meth:`~.StreamAligner.save_pretrained`
are the public faces of these functions.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..errors import AdapterBaseNotFoundError
from .adapter import AdapterSwitch, adapter_names, attach_adapter, load_adapter, save_adapter
from .config import CONFIG_NAME, StreamAlignerConfig

logger = logging.getLogger(__name__)

__all__ = ["AdapterBaseNotFoundError", "attach_pretrained", "load_pretrained", "save_weights"]


def load_pretrained(
    path: str | os.PathLike,
    *,
    config: StreamAlignerConfig | None,
    hub_kwargs: dict[str, Any],
    load_kwargs: dict[str, Any],
    trust_remote_code: bool,
    base_model_name_or_path: str | os.PathLike | None,
) -> tuple[Any, Any, StreamAlignerConfig]:
    """``(model, tokenizer, config)`` of the checkpoint at ``path`` (see :meth:`~.model.StreamAligner.from_pretrained`):
    an adapter checkpoint loads onto its base (``base_model_name_or_path``, else the one its config names) with peft's
    own functions (:func:`~.adapter.load_adapter`), whatever transformers' peft integration accepts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        if config is None:
            config = StreamAlignerConfig.from_pretrained(path, **hub_kwargs)
            if config is None:
                logger.info(
                    "%s has no %s: using the reference prompt defaults", path, CONFIG_NAME
                )
                config = StreamAlignerConfig()
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, **hub_kwargs
        )
        # an adapter checkpoint loads onto its base (the one named, else the one its config names) with peft's
        # own functions (aligner_adapter.load_adapter), whatever transformers' peft integration accepts
        adapter_base = _adapter_base(path, hub_kwargs)
        base = os.fspath(base_model_name_or_path) if base_model_name_or_path is not None else adapter_base
        try:
            if base is None:
                model = AutoModelForCausalLM.from_pretrained(
                    path,
                    use_safetensors=True,
                    trust_remote_code=trust_remote_code,
                    **hub_kwargs,
                    **load_kwargs,
                )
            else:
                # the adapter's revision is not the base's; where to look and as whom is the same
                base_hub = {k: hub_kwargs[k] for k in ("token", "cache_dir", "local_files_only")}
                model = AutoModelForCausalLM.from_pretrained(
                    base, use_safetensors=True, trust_remote_code=trust_remote_code,
                    **(base_hub if base_model_name_or_path is None else {}), **load_kwargs,
                )  # fmt: skip
        except OSError as err:
            if base is None:
                raise
            raise AdapterBaseNotFoundError(
                _base_missing_message(path, base, bool(hub_kwargs.get("local_files_only")), err)
            ) from err
        if base is not None:
            load_adapter(model, os.fspath(path), "default", hub_kwargs=hub_kwargs)
    except AdapterBaseNotFoundError:
        raise  # its message already says what is missing and how to supply it
    except OSError as err:
        raise OSError(
            f"could not load the aligner {str(path)!r} "
            f"(safetensors weights and a tokenizer are required): {err}"
        ) from err
    return model, tokenizer, config


def attach_pretrained(
    base_model: Any,
    adapter: str | os.PathLike,
    *,
    config: StreamAlignerConfig | None,
    others: dict[str, Any],
    hub_kwargs: dict[str, Any],
    trust_remote_code: bool,
) -> tuple[AdapterSwitch, Any, StreamAlignerConfig]:
    """The adapter checkpoint ``adapter`` put on ``base_model`` (**mutated**: it gets the adapter, switched off), with
    the checkpoint's tokenizer and config. ``others``: the loading options that cannot go with a model already
    loaded (refused when given)."""
    from transformers import AutoTokenizer
    from transformers.utils.peft_utils import find_adapter_config_file

    given = sorted(name for name, value in others.items() if value is not None)
    if given:
        raise ValueError(
            f"base_model= uses the model you pass as it is: {', '.join(given)} cannot be combined with it"
        )
    adapter = os.fspath(adapter)
    if find_adapter_config_file(adapter, **hub_kwargs) is None:
        raise ValueError(
            f"{adapter!r} is not a LoRA adapter checkpoint (no adapter_config.json): base_model= puts an adapter on "
            "a model you have loaded; load a full aligner checkpoint without it"
        )
    try:
        if config is None:
            config = StreamAlignerConfig.from_pretrained(adapter, **hub_kwargs) or StreamAlignerConfig()
        tokenizer = AutoTokenizer.from_pretrained(adapter, trust_remote_code=trust_remote_code, **hub_kwargs)
    except OSError as err:
        raise OSError(f"could not load the aligner {adapter!r} (a tokenizer is required): {err}") from err
    return attach_adapter(base_model, adapter, hub_kwargs=hub_kwargs), tokenizer, config


def save_weights(model: Any, directory: str | os.PathLike, switch: AdapterSwitch | None, kwargs: dict[str, Any]) -> None:
    """The weights of an aligner into ``directory``: an adapter alone (one on the upstream, ``switch``, or one loaded
    onto the aligner's base) as peft writes it, else the model's own ``save_pretrained`` (a ``PeftModel`` writes its
    adapter too)."""
    if switch is not None and switch.peft_config is not None:
        # a one-copy aligner's LoRA layers are in the model only while it is on: save with them in
        with switch.enabled():
            save_adapter(model, os.fspath(directory), switch.adapter_name, switch.peft_config)
        return
    loaded = _loaded_adapter(model)
    if loaded is not None:
        save_adapter(model, os.fspath(directory), *loaded)
        return
    model.save_pretrained(directory, safe_serialization=True, **kwargs)


def _loaded_adapter(model: Any) -> tuple[str, Any] | None:
    """``(name, peft config)`` of the one adapter a plain transformers model carries (put there by
    ``from_pretrained`` of an adapter checkpoint or ``load_adapter``), else ``None``; a ``PeftModel`` saves itself."""
    configs = vars(model).get("peft_config") if hasattr(model, "__dict__") else None
    if not isinstance(configs, dict):
        return None
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return None
    names = adapter_names(model) & set(configs)
    if len(names) != 1:
        return None
    (name,) = names
    return name, configs[name]


def _adapter_base(path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> str | None:
    """The base model an adapter checkpoint at ``path`` names (``None`` when it is not an adapter). Reads one JSON
    file, from the directory or the Hub cache."""
    from transformers.utils import find_adapter_config_file

    kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    try:
        found = find_adapter_config_file(os.fspath(path), **kwargs)
    except Exception:  # noqa: BLE001 - not reachable or not an adapter: the caller's own error says why
        return None
    if found is None:
        return None
    try:
        with open(found, encoding="utf-8") as f:
            return str(json.load(f).get("base_model_name_or_path") or "(unnamed)")
    except (OSError, ValueError):
        return "(unreadable adapter_config.json)"


def _base_missing_message(path: str | os.PathLike, base: str, local_files_only: bool, err: BaseException) -> str:
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    where = "offline (HF_HUB_OFFLINE or local_files_only, and it is not in the local Hub cache)" if offline else "from the Hub"
    path = os.fspath(path)
    return (
        f"could not load the aligner {path!r}: it is a LoRA adapter on the base model {base!r}, which could not be "
        f"loaded {where}. Supply the base: StreamAligner.from_pretrained({path!r}, "
        f"base_model_name_or_path=<a local copy of {base}>), or put the adapter on a model you have already loaded "
        f"(one copy of the weights): StreamAligner.from_pretrained({path!r}, base_model=model). "
        f"(transformers said: {' '.join(str(err).split())[:300]})"
    )
