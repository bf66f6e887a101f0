"""Aligners a test server offers by name (``module:attribute`` specs of a ``stream_aligner_serving.json``)."""

import re


def identity(question, prefix, last):
    """Returns every sentence unchanged: stream-aligned output must equal plain generation."""
    return last


def fails_on_second(question, prefix, last):
    """Accepts the first sentence, then fails as an unreachable aligner service would."""
    if prefix:
        raise ConnectionError("aligner service unavailable")
    return last


def rewrite(question, prefix, last):
    """Changes every sentence ("Indeed, ..."): every next sentence must be the upstream's continuation of the
    corrected text."""
    return last if last.startswith("Indeed") else "Indeed, " + last


def slow_identity(question, prefix, last):
    """Unchanged, after 1 s: long enough for a client to leave while the request is running."""
    import time

    time.sleep(1.0)
    return last


_CLAIM = re.compile(r"\b(\d+) ?([-+*]) ?(\d+) ?= ?(\d+)\b")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def check_results(question, prefix, last):
    """A correcting aligner: each ``a op b = c`` (``+``, ``-``, ``*``) with a wrong ``c`` gets the right result, the
    rest of the sentence as it was ("17*23 = 381." becomes "17*23 = 391.")."""

    def fix(m):
        a, op, b, c = m.groups()
        right = _OPS[op](int(a), int(b))
        return m.group(0) if int(c) == right else m.group(0)[: m.start(4) - m.start(0)] + str(right)

    return _CLAIM.sub(fix, last)
