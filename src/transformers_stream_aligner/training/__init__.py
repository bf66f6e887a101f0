"""Training an aligner (trl's layout: each ``<thing>`` beside its config).

- :mod:`.config`: ``AlignerTrainingConfig`` (``transformers.TrainingArguments`` plus the aligner's fields),
  ``LoraArguments``;
- :mod:`.data`: reading, validating and encoding records (``question``, ``prefix``, ``last``, ``correction``);
- :mod:`.records`: building records from an upstream's answers (on-policy) or answer pairs;
- :mod:`.trainer`: ``train_aligner``, a ``transformers.Trainer`` run that saves a loadable aligner.
"""

from ..lazy import lazy_exports

_EXPORTS = {"TrainingResult": "trainer", "train_aligner": "trainer"}


# the entry points, imported on first use (torch and transformers load then, not with the package)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
