"""Training an aligner (trl's layout: each ``<thing>`` beside its config).

- :mod:`.config`: ``AlignerTrainingConfig`` (``transformers.TrainingArguments`` plus the aligner's fields),
  ``LoraArguments``;
- :mod:`.data`: reading, validating and encoding records (``question``, ``prefix``, ``last``, ``correction``);
- :mod:`.records`: building records from an upstream's answers (on-policy) or answer pairs;
- :mod:`.trainer`: ``train_aligner``, a ``transformers.Trainer`` run that saves a loadable aligner.
"""

_EXPORTS = {"TrainingResult": "trainer", "train_aligner": "trainer"}


def __getattr__(name: str):
    # the entry points, imported on first use (torch and transformers load then, not with the package)
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
