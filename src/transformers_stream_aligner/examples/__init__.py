"""Worked examples that ship with the package.

* :mod:`.arithmetic` - seeded arithmetic problems (held-in / held-out split), an exact checker usable as an
  aligner (``fn(question, prefix, last) -> str``) and final-answer scoring; the task of the trained demo
  aligner (``stream-aligner eval``, ``make demo``).
"""
