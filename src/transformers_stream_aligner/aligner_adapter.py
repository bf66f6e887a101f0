"""One copy of the weights for a LoRA aligner: the aligner is a peft adapter on the upstream model itself, switched on
for the aligner's forward passes and off for every other forward.

A LoRA aligner trained on the upstream's own base (the shipped arithmetic aligner is one, on SmolLM2-135M-Instruct)
would otherwise load as a second full copy of the base. Here ``transformers``' peft integration puts the adapter on
the model the user already has (``model.load_adapter``), and :class:`AdapterSwitch` keeps it out of the way: while it
is off, every peft LoRA layer is swapped back for the layer it wraps (and disabled, ``model.disable_adapters()``), so
an upstream forward runs the plain model's own modules (not even a disabled wrapper's Python overhead: measured 5% per
decode step on SmolLM2); an aligner call swaps the wrappers in and enables them (``model.enable_adapters()``).

Threads: the switch takes a reentrant lock around every forward of the model (forward hooks) and holds it for a whole
aligner call, so a forward on another thread (an upstream round, a plain ``generate``) waits until the adapter is off
again instead of running with it on.

Reached through :meth:`StreamAligner.from_pretrained(adapter, base_model=model) <.aligner.StreamAligner.from_pretrained>`
or ``StreamAligner(model, tokenizer, config, adapter_name=...)`` for an adapter already loaded on ``model``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ADAPTER_NAME", "AdapterSwitch", "attach_adapter"]

#: The name the aligner's adapter gets on the upstream model.
ADAPTER_NAME = "stream_aligner"


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
        loaded = list(getattr(model, "peft_config", {}) or {})
        if not getattr(model, "_hf_peft_config_loaded", False) or adapter_name not in loaded:
            raise ValueError(f"the model has no adapter named {adapter_name!r} (its adapters: {loaded or 'none'})")
        if len(loaded) > 1:
            raise ValueError(
                f"the model carries other adapters as well ({', '.join(a for a in loaded if a != adapter_name)}): "
                "the one-copy aligner switches every adapter of the model off for upstream forwards, which would change "
                "what the upstream computes; load the aligner on a model without adapters"
            )
        existing = getattr(model, "_stream_aligner_switch", None)
        if existing is not None:
            raise ValueError(f"the model already carries a one-copy aligner (adapter {existing.adapter_name!r})")
        self.model = model
        self.adapter_name = adapter_name
        #: Forward passes that ran with the adapter on (aligner calls) and off (everything else).
        self.forwards_on = 0
        self.forwards_off = 0
        self._on = False
        self._lock = threading.RLock()
        self._held = threading.local()  # forwards of this thread holding the lock (a failed pre-hook holds none)
        model.set_adapter(adapter_name)
        model.disable_adapters()
        self._wrappers = _tuner_layers(model)  # (parent, attribute, wrapper) of every LoRA layer
        self._swap(wrapped=False)
        self._hooks = [
            model.register_forward_pre_hook(self._before_forward),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]
        model._stream_aligner_switch = self

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
            self.model.enable_adapters()
            self._on = True
            try:
                yield
            finally:
                self._on = False
                self.model.disable_adapters()
                self._swap(wrapped=False)

    def _swap(self, *, wrapped: bool) -> None:
        """Put the LoRA wrappers into the model (``wrapped``) or the layers they wrap. **Mutates** the model."""
        for parent, name, wrapper in self._wrappers:
            setattr(parent, name, wrapper if wrapped else wrapper.get_base_layer())

    def remove(self) -> None:
        """Take the hooks off and delete the adapter from the model (**mutates** it back to the plain model)."""
        with self._lock:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
            if getattr(self.model, "_stream_aligner_switch", None) is self:
                del self.model._stream_aligner_switch
            self._swap(wrapped=True)
            self.model.delete_adapter(self.adapter_name)
            self._swap(wrapped=False)  # the emptied wrappers out for good: the plain model's modules
            self._wrappers = []

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


def attach_adapter(model: Any, adapter: str, *, adapter_kwargs: dict[str, Any] | None = None) -> AdapterSwitch:
    """Load the LoRA adapter ``adapter`` (a directory or Hub repo id, safetensors) onto ``model`` as
    :data:`ADAPTER_NAME`, switched off (:class:`AdapterSwitch`). **Mutates** ``model`` (adds the adapter's layers);
    on an error the model is left as it was."""
    try:
        from peft import PeftModel
    except ImportError as err:
        raise ImportError("a one-copy LoRA aligner needs peft: pip install 'transformers-stream-aligner[train]'") from err
    if isinstance(model, PeftModel):
        raise TypeError(
            "base_model is a peft PeftModel: pass the transformers model itself (the one-copy aligner adds its adapter "
            "through transformers' peft integration and switches it per forward)"
        )
    if not hasattr(model, "load_adapter"):
        raise TypeError(f"base_model must be a transformers PreTrainedModel, got {type(model).__name__}")
    if getattr(model, "_hf_peft_config_loaded", False):
        loaded = ", ".join(getattr(model, "peft_config", {}) or {})
        raise ValueError(
            f"base_model already carries adapters ({loaded}): the one-copy aligner switches every adapter of the model "
            "off for upstream forwards; load it on a model without adapters"
        )
    model.load_adapter(adapter, adapter_name=ADAPTER_NAME, adapter_kwargs=adapter_kwargs or {})
    try:
        return AdapterSwitch(model, ADAPTER_NAME)
    except Exception:
        model.delete_adapter(ADAPTER_NAME)
        raise
