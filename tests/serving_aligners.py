"""Aligners a test server offers by name (``module:attribute`` specs of a ``stream_aligner_serving.json``)."""


def identity(question, prefix, last):
    """Returns every sentence unchanged: stream-aligned output must equal plain generation."""
    return last


def fails_on_second(question, prefix, last):
    """Accepts the first sentence, then fails as an unreachable aligner service would."""
    if prefix:
        raise ConnectionError("aligner service unavailable")
    return last
