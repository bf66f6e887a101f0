"""Sentence boundaries in text, the single source of truth for where a sentence ends.

Both the stopping criterion that ends an upstream round (:class:`SentenceBoundaryCriteria`) and the
dataset tools use :func:`find_sentence_end`; :func:`split_sentences` is the batch form used to turn
whole answers into sentences. Unlike the reference regex, the split is lossless: the pieces
concatenate back to the input exactly, whitespace and formatting included.

Rules, in order:

* A newline ends the sentence before it, terminator or not (lists, headings, code lines).
* A run of terminators (``.``, ``!``, ``?``, ``…`` and the CJK ``。！？``), plus any closing quotes
  or brackets after it, ends a sentence when the next character is whitespace or the text is final.
  One character of look-ahead is needed, so ``3.5`` (digit follows) and ``file.txt`` never split.
* The CJK terminators also end a sentence when no whitespace follows (CJK text has none).
* ``.`` followed by whitespace and a lowercase letter does not end a sentence (``e.g. the``,
  ``approx. three``, ``... and then``), nor does a known title abbreviation (``Dr. Smith``), nor a
  list marker such as ``1.`` or ``a)`` at the start of a line.

Example:

    >>> from transformers_stream_aligner import split_sentences
    >>> split_sentences("We add 3 and 4. Then 3.5 e.g. stays.\\n\\n1. First item.\\n2. Second")
    ['We add 3 and 4.', ' Then 3.5 e.g. stays.', '\\n\\n1. First item.', '\\n2. Second']
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_TERMINATORS",
    "find_sentence_end",
    "scan_sentence_end",
    "split_sentences",
    "split_whitespace",
]

#: Characters that end a sentence (ASCII, the ellipsis character and the CJK full-width forms).
DEFAULT_TERMINATORS = ".!?…。！？"
_CJK_TERMINATORS = frozenset("。！？")
_CLOSERS = frozenset("\"')]}»”’」』】》）〕〉")
# Words after which a single "." essentially never ends a sentence ("Dr. Smith", "e.g. John").
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "fig", "eq", "cf", "approx", "ca",
     "e.g", "i.e", "a.m", "p.m", "u.s", "u.k"}
)


def _word_before(text: str, end: int) -> str:
    """The run of letters and dots that ends at ``end`` (exclusive), lower-cased."""
    i = end
    while i > 0 and (text[i - 1].isalpha() or text[i - 1] == "."):
        i -= 1
    return text[i:end].lower()


def _is_list_marker(text: str, term_pos: int, line_floor: int) -> bool:
    """True when the period at ``term_pos`` closes a list marker (``12.``, ``a.``) at a line start."""
    i = term_pos
    while i > line_floor and text[i - 1].isdigit():
        i -= 1
    if i == term_pos:
        if term_pos - 1 >= line_floor and text[term_pos - 1].isalpha():
            i = term_pos - 1  # single-letter marker such as "a."
            if i > line_floor and text[i - 1].isalnum():
                return False
        else:
            return False
    elif term_pos - i > 3:
        return False
    j = i
    while j > line_floor and text[j - 1] in " \t":
        j -= 1
    return j == 0 or text[j - 1] == "\n"


def find_sentence_end(
    text: str,
    start: int = 0,
    *,
    final: bool = False,
    terminators: str = DEFAULT_TERMINATORS,
) -> int | None:
    """Return the end of the first complete sentence in ``text[start:]``, or ``None``.

    The returned position ``p`` is the end of the sentence's content: terminators and closing quotes
    are included, the whitespace after them is not (it becomes the next sentence's leading
    whitespace). ``None`` means no sentence end is certain yet: with ``final=False`` a terminator at
    the very end of ``text`` is undecided, because the next character may still make it ``3.5`` or
    ``e.g. the``. With ``final=True`` the end of the text ends a sentence too.

    A sentence has content: a position with only whitespace between ``start`` and it is never
    returned. Text before ``start`` is used only as context (a list marker at a line start).

    Args:
        text: the text to scan (typically the current sentence and its look-ahead).
        start: where the sentence starts.
        final: whether ``text`` is complete (end of answer or token budget).
        terminators: characters that end a sentence.

    Example:

        >>> find_sentence_end("It is 3.5 m long. Next")
        17
        >>> find_sentence_end("It is 3.") is None
        True
        >>> find_sentence_end("It is 3.", final=True)
        8
    """
    return scan_sentence_end(text, start, final=final, terminators=terminators)[0]


def scan_sentence_end(
    text: str,
    start: int = 0,
    resume: int = 0,
    *,
    final: bool = False,
    terminators: str = DEFAULT_TERMINATORS,
) -> tuple[int | None, int]:
    """:func:`find_sentence_end` that can resume: returns ``(end, resume)``.

    ``resume`` is where a later call on the same text *with more appended* may start scanning: every
    terminator before it has been ruled out for good, whatever text follows. Passing it back makes
    the work per appended character constant instead of proportional to the sentence so far.

    Example:

        >>> scan_sentence_end("It is 3.5 m")
        (None, 11)
        >>> scan_sentence_end("It is 3.5 m long. Next", resume=11)
        (17, 16)
    """
    n = len(text)
    term_set = frozenset(terminators)
    first_content = start
    while first_content < n and text[first_content].isspace():
        first_content += 1
    if first_content == n:
        return None, start
    i = max(first_content, resume)
    while i < n:
        ch = text[i]
        if ch == "\n":
            p = i
            while text[p - 1] in " \t\r":
                p -= 1
            return p, i
        if ch not in term_set:
            i += 1
            continue
        term_start = i
        while i < n and text[i] in term_set:
            i += 1
        term_end = i
        while i < n and text[i] in _CLOSERS:
            i += 1
        p = i
        if p == n:
            return (p, term_start) if final else (None, term_start)
        nxt = text[p]
        if not nxt.isspace():
            if text[term_end - 1] in _CJK_TERMINATORS:
                return p, term_start
            continue  # "3.5", "file.txt", "?!x"
        run = text[term_start:term_end]
        if run == ".":
            if _word_before(text, term_start) in _ABBREVIATIONS and not _newline_follows(text, p):
                if not final and text[p:].strip(" \t") == "":
                    return None, term_start  # a newline may still follow ("Dr. \n" ends a sentence)
                continue
            if _is_list_marker(text, term_start, first_content):
                continue
        if set(run) <= {".", "…"}:
            # A period or ellipsis followed by a lowercase word does not end a sentence.
            j = p
            while j < n and text[j] in " \t":
                j += 1
            if j == n:
                if not final:
                    return None, term_start  # need the next word to decide
            elif text[j].islower():
                continue
        return p, term_start
    return (n, n) if final else (None, n)


def _newline_follows(text: str, p: int) -> bool:
    j = p
    while j < len(text) and text[j] in " \t":
        j += 1
    return j < len(text) and text[j] in "\r\n"


def split_sentences(text: str, *, terminators: str = DEFAULT_TERMINATORS) -> list[str]:
    """Split ``text`` into sentences that concatenate back to ``text`` exactly.

    Whitespace between sentences is kept as the leading whitespace of the following sentence;
    whitespace at the very end stays with the last sentence. Text with no sentence end is one
    sentence; blank text gives ``[text]`` (or ``[]`` when empty).

    Example:

        >>> split_sentences("Hi. How are you?  Fine")
        ['Hi.', ' How are you?', '  Fine']
    """
    pieces: list[str] = []
    pos = 0
    n = len(text)
    content_end = len(text.rstrip())
    while pos < n:
        p = find_sentence_end(text, pos, final=True, terminators=terminators)
        if p is None or p >= content_end:
            pieces.append(text[pos:])
            break
        pieces.append(text[pos:p])
        pos = p
    return pieces


def split_whitespace(text: str) -> tuple[str, str, str]:
    """Split ``text`` into ``(leading_whitespace, content, trailing_whitespace)``.

    Example:

        >>> split_whitespace("\\n\\n  Hello.  ")
        ('\\n\\n  ', 'Hello.', '  ')
    """
    stripped_left = text.lstrip()
    lead = text[: len(text) - len(stripped_left)]
    content = stripped_left.rstrip()
    trail = stripped_left[len(content) :]
    return lead, content, trail
