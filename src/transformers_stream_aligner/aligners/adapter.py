"""One copy of the weights for a LoRA aligner: the aligner is a peft adapter on the upstream model itself, switched on
for the aligner's forward passes and off for every other forward.

A LoRA aligner trained on the upstream's own base (the shipped arithmetic aligner is one, on SmolLM2-135M-Instruct)
would otherwise load as a second full copy of the base. Here the adapter is put on the model the user already has with
peft's own functions for integrations (``peft.functional``: ``inject_adapter_in_model``,
``set_peft_model_state_dict``), not through transformers' peft integration, whose version gate (transformers >= 5.24
asks for a peft newer than the registry's) does not apply to them. :class:`AdapterSwitch` keeps the adapter out of
the way: while it is off, every peft LoRA layer is swapped back for the layer it wraps (and disabled), so an upstream
forward runs the plain model's own modules (not even a disabled wrapper's Python overhead); an aligner call swaps the
wrappers in and enables them.

Threads: the switch takes a reentrant lock around every forward of the model (forward hooks) and holds it for a whole
aligner call, so a forward on another thread (an upstream round, a plain ``generate``) waits until the adapter is off
again instead of running with it on.

Reached through :meth:`StreamAligner.from_pretrained(adapter, base_model=model) <.aligner.StreamAligner.from_pretrained>`
or ``StreamAligner(model, tokenizer, config, adapter_name=...)`` for an adapter already on ``model`` (put there by
``model.load_adapter`` or peft). :func:`save_adapter` writes an adapter the way peft's ``PeftModel.save_pretrained``
does (safetensors), so it loads back with peft, transformers or :func:`load_adapter`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ADAPTER_NAME", "AdapterSwitch", "adapter_names", "attach_adapter", "load_adapter", "save_adapter"]

#: The name the aligner's adapter gets on the upstream model.
ADAPTER_NAME = "stream_aligner"
#: peft's prefix of the keys of a saved adapter (``PeftModel`` wraps the model twice).
_SAVED_PREFIX = "base_model.model."
WEIGHTS_NAME = "adapter_model.safetensors"


class AdapterSwitch:
    """The on/off state of one peft adapter on one model: off, except inside :meth:`enabled`.

    Creating it **mutates** ``model``: the adapter ``adapter_name`` (already loaded) becomes the active one and is
    disabled, its LoRA layers are swapped out for the layers they wrap (back in inside :meth:`enabled`), and two
    forward hooks are registered (:meth:`remove` undoes all of it). One switch per model: it is kept as
    ``model._stream_aligner_switch``. While it is attached, save the upstream's full weights only after
    :meth:`remove` (with an adapter loaded, ``model.save_pretrained`` writes the adapter, as transformers does).

    Args:
        model: a ``transformers`` model with the adapter loaded (``model.load_adapter(..., adapter_name=...)``).
        adapter_name: that adapter's name.
    """

    def __init__(self, model: Any, adapter_name: str) -> None:
        loaded = adapter_names(model)
        if adapter_name not in loaded:
            raise ValueError(f"the model has no adapter named {adapter_name!r} (its adapters: {sorted(loaded) or 'none'})")
        if len(loaded) > 1:
            raise ValueError(
                f"the model carries other adapters as well ({', '.join(sorted(a for a in loaded if a != adapter_name))}): "
                "the one-copy aligner switches every adapter of the model off for upstream forwards, which would change "
                "what the upstream computes; load the aligner on a model without adapters"
            )
        existing = getattr(model, "_stream_aligner_switch", None)
        if existing is not None:
            raise ValueError(f"the model already carries a one-copy aligner (adapter {existing.adapter_name!r})")
        self.model = model
        self.adapter_name = adapter_name
        #: The adapter's peft config (what :func:`save_adapter` writes), when the model keeps one.
        self.peft_config = (getattr(model, "peft_config", None) or {}).get(adapter_name)
        #: Forward passes that ran with the adapter on (aligner calls) and off (everything else).
        self.forwards_on = 0
        self.forwards_off = 0
        self._on = False
        self._lock = threading.RLock()
        self._held = threading.local()  # forwards of this thread holding the lock (a failed pre-hook holds none)
        self._wrappers = _tuner_layers(model)  # (parent, attribute, wrapper) of every LoRA layer
        for _, _, wrapper in self._wrappers:
            wrapper.set_adapter(adapter_name)
            wrapper.enable_adapters(False)
        for param in self._adapter_parameters():
            param.requires_grad_(False)  # an aligner is used, not trained, on the upstream
        self._swap(wrapped=False)
        self._hooks = [
            model.register_forward_pre_hook(self._before_forward),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]
        model._stream_aligner_switch = self

    def _adapter_parameters(self) -> Iterator[Any]:
        for _, _, wrapper in self._wrappers:
            for name, param in wrapper.named_parameters():
                if f".{self.adapter_name}." in f".{name}":
                    yield param

    @property
    def is_on(self) -> bool:
        """Whether the adapter is on now (only inside :meth:`enabled`)."""
        return self._on

    def _before_forward(self, module: Any, args: Any) -> None:
        self._lock.acquire()  # a forward on another thread waits for an aligner call to end (re-entrant for its own)
        self._held.count = getattr(self._held, "count", 0) + 1
        if self._on:
            self.forwards_on += 1
        else:
            self.forwards_off += 1

    def _after_forward(self, module: Any, args: Any, output: Any) -> None:
        if getattr(self._held, "count", 0) > 0:  # always called, also when an earlier hook failed before ours
            self._held.count -= 1
            self._lock.release()

    @contextmanager
    def enabled(self) -> Iterator[None]:
        """The adapter on for this thread's forwards inside the block, off again after it (also on an exception);
        other threads' forwards wait meanwhile. Re-entrant."""
        with self._lock:
            if self._on:  # nested: already on
                yield
                return
            self._swap(wrapped=True)
            self._enable(True)
            self._on = True
            try:
                yield
            finally:
                self._on = False
                self._enable(False)
                self._swap(wrapped=False)

    def _enable(self, enabled: bool) -> None:
        for _, _, wrapper in self._wrappers:
            wrapper.enable_adapters(enabled)

    def _swap(self, *, wrapped: bool) -> None:
        """Put the LoRA wrappers into the model (``wrapped``) or the layers they wrap. **Mutates** the model."""
        for parent, name, wrapper in self._wrappers:
            setattr(parent, name, wrapper if wrapped else wrapper.get_base_layer())

    def remove(self) -> None:
        """Take the hooks off and the adapter out of the model (**mutates** it back to the plain model: its own
        modules, no adapter config)."""
        with self._lock:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
            if getattr(self.model, "_stream_aligner_switch", None) is self:
                del self.model._stream_aligner_switch
            self._swap(wrapped=False)  # the wrappers out for good: the plain model's modules
            self._wrappers = []
            configs = getattr(self.model, "peft_config", None)
            if isinstance(configs, dict):
                configs.pop(self.adapter_name, None)
                if not configs:
                    del self.model.peft_config
                    if getattr(self.model, "_hf_peft_config_loaded", False):
                        self.model._hf_peft_config_loaded = False  # put there by transformers' load_adapter

    def __repr__(self) -> str:
        return f"AdapterSwitch(adapter_name={self.adapter_name!r}, on={self._on})"


def _tuner_layers(model: Any) -> list[tuple[Any, str, Any]]:
    """``(parent module, attribute name, peft tuner layer)`` for every outermost peft tuner layer of ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = []
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if not isinstance(parent, BaseTunerLayer):
                found.append((parent, attr, module))
    return found


def adapter_names(model: Any) -> set[str]:
    """The names of the peft adapters whose layers are in ``model`` now."""
    return set().union(*(_names_in(layer) for _, _, layer in _tuner_layers(model)))


def load_adapter(model: Any, adapter: str, adapter_name: str, *, hub_kwargs: dict[str, Any] | None = None) -> Any:
    """Put the LoRA adapter checkpoint ``adapter`` (a directory or Hub repo id: ``adapter_config.json`` and
    ``adapter_model.safetensors``; safetensors only) on ``model`` as ``adapter_name``, with peft's functions for
    integrations. **Mutates** ``model`` (adds the adapter's layers, on); on an error it is left as it was. Returns the
    adapter's peft config. ``hub_kwargs``: ``revision``, ``token``, ``cache_dir``, ``local_files_only``."""
    try:
        # the functions peft.functional lists as its public API for integrations, from where every peft release has them
        from peft import PeftConfig, inject_adapter_in_model
        from peft.utils import set_peft_model_state_dict
    except ImportError as err:
        raise ImportError("a LoRA aligner needs peft: pip install 'transformers-stream-aligner[train]'") from err
    from safetensors.torch import load_file

    hub_kwargs = {k: v for k, v in (hub_kwargs or {}).items() if v is not None and v is not False}
    config = PeftConfig.from_pretrained(adapter, **hub_kwargs)
    if getattr(config, "modules_to_save", None):
        raise ValueError(
            f"{adapter!r} trains whole modules as well ({', '.join(config.modules_to_save)}): only adapters made of "
            "LoRA layers can be switched on and off on the upstream; load it as a second copy (without base_model=)"
        )
    config.inference_mode = True
    state = {k.removeprefix(_SAVED_PREFIX): v for k, v in load_file(_weights_file(adapter, hub_kwargs)).items()}
    before = dict(vars(model).get("peft_config") or {}) if "peft_config" in vars(model) else None
    inject_adapter_in_model(config, model, adapter_name)
    model.train(model.training)  # the new layers in the model's mode: an eval model's LoRA dropout stays off
    try:
        result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
        marker = f".{adapter_name}."
        missing = [k for k in result.missing_keys if marker in k]
        if result.unexpected_keys or missing:
            raise ValueError(
                f"{adapter!r} does not fit this model: unexpected weights {result.unexpected_keys[:3]}, missing "
                f"weights {missing[:3]}"
            )
        for _, _, layer in _tuner_layers(model):
            layer.set_adapter(adapter_name)
    except Exception:
        _take_out(model, adapter_name, before)
        raise
    return config


def _weights_file(adapter: str, hub_kwargs: dict[str, Any]) -> str:
    import os

    if os.path.isdir(adapter):
        path = os.path.join(adapter, WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise OSError(f"{adapter!r} has no {WEIGHTS_NAME} (adapters load from safetensors only)")
        return path
    from huggingface_hub import hf_hub_download

    return hf_hub_download(adapter, WEIGHTS_NAME, **hub_kwargs)


def _take_out(model: Any, adapter_name: str, peft_config_before: dict[str, Any] | None) -> None:
    """Undo a failed :func:`load_adapter`: the layers it wrapped back in place, ``peft_config`` as it was."""
    for parent, name, wrapper in _tuner_layers(model):
        if _names_in(wrapper) <= {adapter_name}:
            setattr(parent, name, wrapper.get_base_layer())
    if peft_config_before is None:
        vars(model).pop("peft_config", None)
    else:
        model.peft_config = peft_config_before


def _names_in(layer: Any) -> set[str]:
    names: set[str] = set()
    for attribute in getattr(layer, "adapter_layer_names", ()):
        names.update(getattr(layer, attribute, None) or {})
    return names


def save_adapter(model: Any, directory: str, adapter_name: str, peft_config: Any) -> None:
    """Write the adapter ``adapter_name`` of ``model`` (its layers in the model now) into ``directory`` as peft's
    ``PeftModel.save_pretrained`` does: ``adapter_config.json`` and ``adapter_model.safetensors``."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    state = {_SAVED_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}
    peft_config.save_pretrained(directory)
    save_file(state, f"{directory}/{WEIGHTS_NAME}", metadata={"format": "pt"})


def attach_adapter(model: Any, adapter: str, *, hub_kwargs: dict[str, Any] | None = None) -> AdapterSwitch:
    """Load the LoRA adapter ``adapter`` (a directory or Hub repo id, safetensors) onto ``model`` as
    :data:`ADAPTER_NAME` (:func:`load_adapter`), switched off (:class:`AdapterSwitch`). **Mutates** ``model`` (adds the
    adapter's layers); on an error the model is left as it was."""
    try:
        from peft import PeftModel
    except ImportError as err:
        raise ImportError("a one-copy LoRA aligner needs peft: pip install 'transformers-stream-aligner[train]'") from err
    if isinstance(model, PeftModel):
        raise TypeError(
            "base_model is a peft PeftModel: pass the transformers model itself (the one-copy aligner adds its adapter "
            "to it and switches it per forward)"
        )
    if not hasattr(model, "get_submodule") or not hasattr(model, "config"):
        raise TypeError(f"base_model must be a transformers PreTrainedModel, got {type(model).__name__}")
    loaded = adapter_names(model)
    if loaded or getattr(model, "_stream_aligner_switch", None) is not None:
        raise ValueError(
            f"base_model already carries adapters ({', '.join(sorted(loaded)) or ADAPTER_NAME}): the one-copy aligner "
            "switches every adapter of the model off for upstream forwards; load it on a model without adapters"
        )
    before = dict(model.peft_config) if "peft_config" in vars(model) else None
    load_adapter(model, adapter, ADAPTER_NAME, hub_kwargs=hub_kwargs)
    try:
        return AdapterSwitch(model, ADAPTER_NAME)
    except Exception:
        _take_out(model, ADAPTER_NAME, before)
        raise
