r"""Build aligner training records (question, prefix, last, correction) from answers.

Two routes, both cutting answers with the project's own lossless :func:`split_sentences` (the one the
stopping criterion uses at inference, so training sentences look like the sentences the aligner sees):

* :func:`records_from_pairs`: from ``{question, answer, corrected_answer}`` pairs. The sentences of the
  two answers are matched (``difflib`` on whitespace-normalised sentences); each original sentence
  becomes a record whose prefix is the corrected answer before its match. Unchanged sentences become
  copy records (the aligner must learn to leave good sentences alone). Sentences the correction
  inserted join the correction of the sentence before them; original sentences the correction deleted
  have no record (the aligner cannot delete): both are counted in the :class:`PairReport`.
* :func:`records_on_policy`: as the paper collects data. An upstream model answers each question with
  stream-aligned generation; every sentence is handed to a corrector (any aligner, callable
  ``fn(question, prefix, last) -> str`` or model) and recorded as ``(question, prefix-so-far-corrected,
  last, correction)`` exactly as the corrector saw it; generation continues from the corrected text.

Example:

    >>> from transformers_stream_aligner.training.records import records_from_pairs
    >>> records, report = records_from_pairs([{"question": "What is 17*23?",
    ...     "answer": "Let me compute. 17*23 = 381. Done.",
    ...     "corrected_answer": "Let me compute. 17*23 = 391. Done."}])
    >>> [(r["prefix"], r["last"], r["correction"]) for r in records]
    [('', 'Let me compute.', 'Let me compute.'), ('Let me compute.', '17*23 = 381.', '17*23 = 391.'), ('Let me compute. 17*23 = 391.', 'Done.', 'Done.')]
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrainingDataError
from ..runtime.aligner_call import AlignmentRequest, as_correction_fn
from ..runtime.boundary.splitter import DEFAULT_TERMINATORS, split_sentences
from .data import RECORD_FIELDS, check_fields, read_records, read_utf8

logger = logging.getLogger(__name__)

__all__ = ["OnPolicyReport", "PairReport", "read_questions", "records_from_pairs", "records_on_policy", "write_records"]

PAIR_FIELDS = ("question", "answer", "corrected_answer")
#: Characters of answer prefix a record keeps (whole sentences): more than the reference's 4096-token examples hold.
DEFAULT_MAX_PREFIX_CHARS = 16384


@dataclass
class PairReport:
    """Counts of :func:`records_from_pairs`.

    Attributes:
        pairs: pairs read; records: records written; changed: records whose correction differs from ``last``.
        inserted: corrected sentences with no original, joined to a neighbouring correction.
        deleted: original sentences with no counterpart in the correction (no record).
        prefix_shortened: records whose prefix lost leading sentences to ``max_prefix_chars``.
    """

    pairs: int = 0
    records: int = 0
    changed: int = 0
    inserted: int = 0
    deleted: int = 0
    prefix_shortened: int = 0

    def summary(self) -> str:
        return (
            f"{self.records} records from {self.pairs} pairs ({self.changed} changed, "
            f"{self.records - self.changed} copies); {self.inserted} inserted sentence(s) joined to a neighbour, "
            f"{self.deleted} deleted sentence(s) without a record"
            + (f"; {self.prefix_shortened} prefix(es) cut to their last sentences" if self.prefix_shortened else "")
        )


def _sentences(text: str, terminators: str) -> list[str]:
    """Sentences with content (a whitespace-only piece joins the next sentence: it has nothing to correct)."""
    pieces, pending = [], ""
    for piece in split_sentences(text, terminators=terminators):
        pending += piece
        if pending.strip():
            pieces.append(pending)
            pending = ""
    if pending and pieces:
        pieces[-1] += pending
    return pieces


def _trailing_prefix(sentences: list[str], end: int, max_chars: int | None) -> tuple[str, bool]:
    """The text of ``sentences[:end]`` (stripped), or of its last whole sentences that fit in ``max_chars``; and
    whether sentences were left out. Work and size are bounded by ``max_chars``, not by ``end``."""
    if max_chars is None:
        return "".join(sentences[:end]).strip(), False
    start, size = end, 0
    while start > 0 and size + len(sentences[start - 1].strip()) <= max_chars:
        size += len(sentences[start - 1])
        start -= 1
    return "".join(sentences[start:end]).strip(), start > 0


def _norm(sentence: str) -> str:
    return " ".join(sentence.split())


def records_from_pairs(
    pairs: Iterable[Mapping[str, str]],
    *,
    terminators: str = DEFAULT_TERMINATORS,
    source: str | None = None,
    max_prefix_chars: int | None = DEFAULT_MAX_PREFIX_CHARS,
) -> tuple[list[dict[str, str]], PairReport]:
    """Sentence-level records from ``{question, answer, corrected_answer}`` pairs (see the module docstring).

    Each record's prefix keeps the last whole sentences of the corrected answer that fit in ``max_prefix_chars``
    characters (``None``: all), so the records grow linearly with an answer, not with its square; training
    drops leading prefix sentences the same way when an example is over its token ``max_length``. Raises
    :class:`TrainingDataError` naming the pair and field when a pair is malformed.
    """
    if max_prefix_chars is not None and max_prefix_chars < 0:
        raise ValueError(f"max_prefix_chars must be >= 0 or None, got {max_prefix_chars}")
    pairs = check_fields(list(pairs), PAIR_FIELDS, non_empty=PAIR_FIELDS, source=source, purpose="building records")
    report = PairReport(pairs=len(pairs))
    records: list[dict[str, str]] = []
    for pair in pairs:
        original = _sentences(pair["answer"], terminators)
        corrected = _sentences(pair["corrected_answer"], terminators)
        matcher = difflib.SequenceMatcher(a=[_norm(s) for s in original], b=[_norm(s) for s in corrected], autojunk=False)
        pair_records: list[tuple[int, int, int]] = []  # (original index, corrected start, corrected end)
        carry_from: int | None = None  # inserted corrected sentences waiting for the next original
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "insert":
                report.inserted += j2 - j1
                if pair_records:
                    o, start, _ = pair_records[-1]
                    pair_records[-1] = (o, start, j2)
                elif carry_from is None:
                    carry_from = j1
                continue
            if tag == "delete":
                report.deleted += i2 - i1
                continue
            paired = min(i2 - i1, j2 - j1)  # "equal" or "replace": pair in order
            for t in range(paired):
                start = j1 + t
                if carry_from is not None:
                    start, carry_from = carry_from, None
                pair_records.append((i1 + t, start, j1 + t + 1))
            if j2 - j1 > paired:  # more corrected sentences: they join the last paired correction
                o, start, _ = pair_records[-1]
                pair_records[-1] = (o, start, j2)
                report.inserted += j2 - j1 - paired
            report.deleted += i2 - i1 - paired
        for o, start, end in pair_records:
            last = original[o].strip()
            correction = "".join(corrected[start:end]).strip()
            prefix, shortened = _trailing_prefix(corrected, start, max_prefix_chars)
            report.prefix_shortened += int(shortened)
            records.append({"question": pair["question"], "prefix": prefix, "last": last, "correction": correction})
            report.changed += int(_norm(correction) != _norm(last))
    report.records = len(records)
    return records, report


class _Recorder:
    """An aligner that asks ``correct`` and records every request it answers with text."""

    def __init__(self, correct: Any) -> None:
        self._correct = correct
        self.records: list[dict[str, str]] = []

    def correct(self, requests: list[AlignmentRequest]) -> list[str]:
        outputs = self._correct(requests)
        for request, output in zip(requests, outputs, strict=False):  # a wrong count is reported by generate
            if isinstance(output, str) and output.strip():
                self.records.append(
                    {"question": request.question, "prefix": request.prefix, "last": request.last, "correction": output.strip()}
                )
        return outputs


@dataclass
class OnPolicyReport:
    """What :func:`records_on_policy` did: ``records`` collected, ``batches`` run, and the ``failures`` (one
    ``"questions i-j: error"`` line per batch whose generation failed; the records it collected before are kept)."""

    records: int = 0
    batches: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        failed = f"; {len(self.failures)} of {self.batches} batches failed (their records so far kept)" if self.failures else ""
        return f"{self.records} records from {self.batches} batches{failed}"


def records_on_policy(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    corrector: Any,
    *,
    num_samples: int = 1,
    batch_size: int = 4,
    progress: bool = True,
    report: OnPolicyReport | None = None,
    **generate_kwargs: Any,
) -> list[dict[str, str]]:
    """Records collected while ``model`` answers ``questions`` with stream alignment by ``corrector``.

    Each question is asked ``num_samples`` times (``num_samples > 1`` needs ``do_sample=True``), in
    batches of ``batch_size`` questions, as one chat turn when the tokenizer has a chat template (the question is
    plain text: control-token strings in it stay text). Every request the corrector answers with text becomes a
    record; a correction generation rejects (e.g. too long) is replaced by the original sentence
    (``invalid_correction="keep_original"``) and not recorded. When a batch fails (the corrector raised, say),
    the records collected so far are kept, the failure is logged and counted in ``report`` (an
    :class:`OnPolicyReport`, filled in if given), and the next batch runs; only a build where every batch failed
    raises. ``generate_kwargs`` go to ``generate`` (``max_new_tokens``, ``do_sample``, ``temperature``...).
    The corrector is never given the model's own draft beyond the sentence it corrects. The tokenizer is not
    mutated.
    """
    import torch
    from tqdm.auto import tqdm

    from ..generation.generate import stream_aligned_generate

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_samples > 1 and not generate_kwargs.get("do_sample"):
        raise ValueError("num_samples > 1 needs do_sample=True (greedy answers would repeat)")
    report = report if report is not None else OnPolicyReport()
    recorder = _Recorder(as_correction_fn(corrector))
    last_error: BaseException | None = None
    for begin in tqdm(range(0, len(questions), batch_size), desc="Answering questions", disable=not progress):
        batch = list(questions[begin : begin + batch_size])
        report.batches += 1
        if getattr(tokenizer, "chat_template", None):
            enc = tokenizer.apply_chat_template(
                [[{"role": "user", "content": q}] for q in batch],
                add_generation_prompt=True,
                sanitize_control_tokens=True,
                padding=True,
                return_tensors="pt",
                return_dict=True,
                tokenizer_kwargs={"padding_side": "left"},
            )
        else:
            enc = tokenizer(batch, padding=True, padding_side="left", return_tensors="pt")
        try:
            with torch.no_grad():
                stream_aligned_generate(
                    model,
                    enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    tokenizer=tokenizer,
                    aligner=recorder,
                    aligner_question=batch,
                    invalid_correction="keep_original",
                    num_return_sequences=num_samples,
                    **generate_kwargs,
                )
        except Exception as err:  # one failing batch must not lose the records of the others
            last_error = err
            report.failures.append(f"questions {begin}-{begin + len(batch) - 1}: {type(err).__name__}: {err}")
            logger.warning("build-dataset: %s; continuing with the next batch", report.failures[-1])
    report.records = len(recorder.records)
    if report.failures and len(report.failures) == report.batches:
        raise RuntimeError(f"every batch failed; the first: {report.failures[0]}") from last_error
    return recorder.records


def read_questions(source: str | os.PathLike) -> list[str]:
    """Questions from a ``.txt`` file (one per non-empty line) or JSON/JSONL records with a ``question`` field."""
    path = os.fspath(source)
    if path.endswith(".txt"):
        questions = [line.strip() for line in read_utf8(path).splitlines() if line.strip()]
        if not questions:
            raise TrainingDataError("holds no questions", source=path)
        return questions
    rows = check_fields(read_records(path), ("question",), non_empty=("question",), source=path, purpose="questions")
    return [row["question"] for row in rows]


def write_records(records: Sequence[Mapping[str, str]], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write records as JSONL (the training format), atomically: a failed write leaves no partial file."""
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory; give the path of a JSONL file to write")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps({k: record[k] for k in RECORD_FIELDS}, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
