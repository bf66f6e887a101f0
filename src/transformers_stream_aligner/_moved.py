"""The module paths of releases before the package was organised in subpackages, kept for one release.

``import transformers_stream_aligner.aligner`` (or any old path below) still works: it warns with a
``DeprecationWarning`` naming the new path and gives the new module itself (the same object, so patching either
name patches both). Where names left a module (:data:`MOVED_NAMES`), the old path is a thin module of its own that
hands out the new module's names and those that moved. Installed by the package's ``__init__``; nothing is imported
until an old path is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

__all__ = ["MOVED", "MOVED_NAMES", "install"]

_PACKAGE = __name__.rpartition(".")[0]

#: Old module (relative to the package) -> where it lives now.
MOVED = {
    "aligner": "aligners.model",
    "aligner_adapter": "aligners.adapter",
    "aligner_batching": "aligners.batching",
    "aligner_calculator": "aligners.calculator",
    "aligner_decoding": "aligners.decoding",
    "aligner_edits": "aligners.edits",
    "stream_aligner_config": "aligners.config",
    "vllm_aligner": "aligners.vllm",
    "model_card": "aligners.model_card",
    "aligner_call": "runtime.aligner_call",
    "boundary": "runtime.boundary.tracker",
    "sentence_splitter": "runtime.boundary.splitter",
    "stopping_criteria": "runtime.boundary.stopping_criteria",
    "cache": "runtime.cache",
    "logits_process": "runtime.logits_process",
    "loop": "runtime.loop",
    "plan": "runtime.plan",
    "prompt": "runtime.prompt",
    "splice": "runtime.splice",
    "streamers": "runtime.streamers",
    "engines": "runtime.engines",
    "custom_generate": "generation.custom_generate",
    "generation_fields": "generation.fields",
    "dataset_builder": "training.records",
    "training_config": "training.config",
    "training_data": "training.data",
    "serve": "serving.openai.serving",
    "serve_config": "serving.openai.config",
    "serving_config": "serving.served_aligners",
}


#: Old module -> {name: the module (relative to the package) it lives in now}, for names that left their module.
MOVED_NAMES = {
    "serve": {"build_app": "serving.openai.api_router", "serve": "serving.openai.api_router",
              "ServeConfig": "serving.openai.config", "UNSUPPORTED": "serving.openai.protocol"},
    "aligner": {"load_aligner": "aligners.specs", "AdapterBaseNotFoundError": "aligners.pretrained"},
    "aligner_decoding": {name: "aligners.copy_draft" for name in
                         ("CopyBiasLogitsProcessor", "CopyTracker", "propose_copy_draft")},
    "custom_generate": {name: "serving.custom_generate" for name in
                        ("MIN_TRANSFORMERS_VERSION", "check_transformers_version", "export_custom_generate", "generate")},
    "engines.vllm_engine": {"stream_aligned_completion": "generation.completion",
                            "astream_aligned_completion": "generation.completion"},
}  # fmt: skip


def _thin_module(name: str, target: str, names: dict[str, str]) -> types.ModuleType:
    """A module ``name`` that hands out the attributes of ``target`` and ``names`` (each from its new module)."""
    module = types.ModuleType(name, f"Deprecated: see {target}.")
    new = importlib.import_module(target)

    def __getattr__(attribute: str) -> object:
        if attribute in names:
            return getattr(importlib.import_module(f"{_PACKAGE}.{names[attribute]}"), attribute)
        return getattr(new, attribute)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__all__ = sorted({*getattr(new, "__all__", ()), *names})
    return module


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module that now lives at the new one."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ARG002 - the finder protocol
        prefix, _, rest = fullname.partition(".")
        if prefix != _PACKAGE:
            return None
        for old, new in MOVED.items():
            if rest == old or rest.startswith(old + "."):
                target_name = f"{_PACKAGE}.{new}{rest[len(old):]}"
                return importlib.machinery.ModuleSpec(fullname, self, loader_state=(target_name, rest))
        return None

    def create_module(self, spec):
        target, old = spec.loader_state
        warnings.warn(
            f"{spec.name} has moved to {target}; the old path works until the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        if old in MOVED_NAMES:
            return _thin_module(spec.name, target, MOVED_NAMES[old])
        return importlib.import_module(target)

    def exec_module(self, module):  # the new module ran when it was imported
        pass


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (before the path finder, which would load a second copy of a moved
    submodule under its old name), once."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
