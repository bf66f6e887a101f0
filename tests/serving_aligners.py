"""Aligners a test server offers by name (``module:attribute`` specs of a ``stream_aligner_serving.json``)."""


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
