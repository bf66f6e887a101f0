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

    >>> from transformers_stream_aligner.dataset_builder import records_from_pairs
    >>> records, report = records_from_pairs([{"question": "What is 17*23?",
    ...     "answer": "Let me compute. 17*23 = 381. Done.",
    ...     "corrected_answer": "Let me compute. 17*23 = 391. Done."}])
    >>> [(r["prefix"], r["last"], r["correction"]) for r in records]
    [('', 'Let me compute.', 'Let me compute.'), ('Let me compute.', '17*23 = 381.', '17*23 = 391.'), ('Let me compute. 17*23 = 391.', 'Done.', 'Done.')]
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .aligner import AlignmentRequest, as_correction_fn
from .sentence_splitter import DEFAULT_TERMINATORS, split_sentences
from .training_data import RECORD_FIELDS, TrainingDataError, check_fields, read_records

__all__ = ["PairReport", "read_questions", "records_from_pairs", "records_on_policy", "write_records"]

PAIR_FIELDS = ("question", "answer", "corrected_answer")


@dataclass
class PairReport:
    """Counts of :func:`records_from_pairs`.

    Attributes:
        pairs: pairs read; records: records written; changed: records whose correction differs from ``last``.
        inserted: corrected sentences with no original, joined to a neighbouring correction.
        deleted: original sentences with no counterpart in the correction (no record).
    """

    pairs: int = 0
    records: int = 0
    changed: int = 0
    inserted: int = 0
    deleted: int = 0

    def summary(self) -> str:
        return (
            f"{self.records} records from {self.pairs} pairs ({self.changed} changed, "
            f"{self.records - self.changed} copies); {self.inserted} inserted sentence(s) joined to a neighbour, "
            f"{self.deleted} deleted sentence(s) without a record"
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


def _norm(sentence: str) -> str:
    return " ".join(sentence.split())


def records_from_pairs(
    pairs: Iterable[Mapping[str, str]],
    *,
    terminators: str = DEFAULT_TERMINATORS,
    source: str | None = None,
) -> tuple[list[dict[str, str]], PairReport]:
    """Sentence-level records from ``{question, answer, corrected_answer}`` pairs (see the module docstring).

    Raises :class:`TrainingDataError` naming the pair and field when a pair is malformed.
    """
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
            records.append(
                {
                    "question": pair["question"],
                    "prefix": "".join(corrected[:start]).strip(),
                    "last": last,
                    "correction": correction,
                }
            )
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


def records_on_policy(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    corrector: Any,
    *,
    num_samples: int = 1,
    batch_size: int = 4,
    progress: bool = True,
    **generate_kwargs: Any,
) -> list[dict[str, str]]:
    """Records collected while ``model`` answers ``questions`` with stream alignment by ``corrector``.

    Each question is asked ``num_samples`` times (``num_samples > 1`` needs ``do_sample=True``), in
    batches of ``batch_size`` questions, as one chat turn when the tokenizer has a chat template. Every
    request the corrector answers with text becomes a record; a correction generation rejects (e.g.
    too long) is replaced by the original sentence (``invalid_correction="keep_original"``) and not
    recorded. ``generate_kwargs`` go to ``generate`` (``max_new_tokens``, ``do_sample``, ``temperature``...).
    The corrector is never given the model's own draft beyond the sentence it corrects.
    """
    import torch
    from tqdm.auto import tqdm

    from .generation import stream_aligned_generate

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_samples > 1 and not generate_kwargs.get("do_sample"):
        raise ValueError("num_samples > 1 needs do_sample=True (greedy answers would repeat)")
    recorder = _Recorder(as_correction_fn(corrector))
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for begin in tqdm(range(0, len(questions), batch_size), desc="Answering questions", disable=not progress):
            batch = list(questions[begin : begin + batch_size])
            if getattr(tokenizer, "chat_template", None):
                enc = tokenizer.apply_chat_template(
                    [[{"role": "user", "content": q}] for q in batch],
                    add_generation_prompt=True,
                    padding=True,
                    return_tensors="pt",
                    return_dict=True,
                )
            else:
                enc = tokenizer(batch, padding=True, return_tensors="pt")
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
    finally:
        tokenizer.padding_side = padding_side
    return recorder.records


def read_questions(source: str | os.PathLike) -> list[str]:
    """Questions from a ``.txt`` file (one per non-empty line) or JSON/JSONL records with a ``question`` field."""
    path = os.fspath(source)
    if path.endswith(".txt"):
        questions = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not questions:
            raise TrainingDataError("holds no questions", source=path)
        return questions
    rows = check_fields(read_records(path), ("question",), non_empty=("question",), source=path, purpose="questions")
    return [row["question"] for row in rows]


def write_records(records: Sequence[Mapping[str, str]], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write records as JSONL (the training format), atomically: a failed write leaves no partial file."""
    out = Path(path)
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
