r"""Training data for an aligner: reading reference-format records, checking them, tokenizing with masked labels.

A record is one sentence of an upstream answer and its correction, in the reference format (the
released ``htlou/stream-aligner`` files use it)::

    {"question": "...", "prefix": "corrected answer so far", "last": "the sentence", "correction": "..."}

The model input is the aligner prompt built by :meth:`StreamAlignerConfig.encode_prompt` (the very
call :meth:`StreamAligner.correct` uses at inference), followed by the correction and the tokenizer's
EOS. Labels are ``-100`` on every prompt token, so the loss is on the correction and the EOS only.
A record longer than ``max_length`` loses whole sentences from the start of its prefix until it fits
(the correction is never cut); a record that does not fit even with an empty prefix is dropped. Both
are counted in the :class:`EncodingReport`.

Example (with the SmolLM2 tokenizer the loss falls on the correction and ``<|im_end|>`` only):

    >>> from transformers_stream_aligner import StreamAlignerConfig
    >>> from transformers_stream_aligner.training.data import encode_record
    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained("path/to/aligner-base")  # doctest: +SKIP
    >>> ex = encode_record({"question": "What is 17*23?", "prefix": "", "last": "17*23 = 381.",
    ...                     "correction": "17*23 = 391."}, tok, StreamAlignerConfig())  # doctest: +SKIP
    >>> tok.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100])  # doctest: +SKIP
    '17*23 = 391.<|im_end|>'
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..aligners.config import StreamAlignerConfig
from ..errors import TrainingDataError
from ..runtime.boundary.splitter import split_sentences
from ..tokens import special_token_ids, token_id_list, tokenize_plain_text

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "RECORD_FIELDS",
    "EncodingReport",
    "TrainingDataError",
    "check_fields",
    "copy_targets_of",
    "encode_record",
    "encode_records",
    "read_records",
    "validate_records",
]

#: The fields of a training record, in the reference order.
RECORD_FIELDS = ("question", "prefix", "last", "correction")
#: Label value of tokens without loss (PyTorch's cross-entropy ``ignore_index``).
IGNORE_INDEX = -100
# Fields that must hold text (the prefix is empty for an answer's first sentence).
_NON_EMPTY = ("question", "last", "correction")
HUB_PREFIX = "hf://datasets/"


# ---------------------------------------------------------------------------------------------- reading
def read_records(
    source: str | os.PathLike,
    *,
    split: str = "train",
    revision: str | None = None,
    token: str | bool | None = None,
) -> list[dict[str, Any]]:
    """Read raw records (not yet checked) from a file or the Hub.

    ``source`` may be

    * a local ``.json`` file holding a list of objects, or a ``.jsonl`` file with one object per line;
    * ``hf://datasets/<owner>/<name>/<path-in-repo>`` (e.g. ``hf://datasets/htlou/stream-aligner/math.json``):
      the file is fetched with ``huggingface_hub`` (cached; works offline with ``HF_HUB_OFFLINE=1`` once
      cached) and read as above;
    * any other name or a local directory: loaded with ``datasets.load_dataset(source, split=split)``
      (needs the ``datasets`` package: ``pip install "transformers-stream-aligner[train]"``).

    Raises :class:`TrainingDataError` for unreadable JSON (with the line), a file that holds no records
    or a wrong top-level shape, and ``FileNotFoundError`` for a missing local file or a Hub file that cannot be
    fetched (naming it).
    """
    text_source = os.fspath(source)
    if text_source.startswith(HUB_PREFIX):
        from huggingface_hub import hf_hub_download

        rest = text_source[len(HUB_PREFIX) :]
        parts = rest.split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise TrainingDataError(f"expected {HUB_PREFIX}<owner>/<name>/<file>, got {text_source!r}")
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = hf_hub_download(
                repo_id=f"{parts[0]}/{parts[1]}", filename=parts[2], repo_type="dataset", revision=revision, token=token
            )
        except (OSError, EntryNotFoundError) as err:  # not on the Hub, not in the cache offline, no connection
            raise FileNotFoundError(f"training data {text_source!r} could not be fetched: {err}") from err
        records = _read_json_file(Path(path), label=text_source)
    elif Path(text_source).is_file():
        records = _read_json_file(Path(text_source), label=text_source)
    elif Path(text_source).suffix in (".json", ".jsonl") and not Path(text_source).is_dir():
        raise FileNotFoundError(f"training data file {text_source!r} does not exist")
    else:
        records = _read_with_datasets(text_source, split=split, revision=revision, token=token)
    if not records:
        raise TrainingDataError("holds no records", source=text_source)
    return records


def _read_json_file(path: Path, *, label: str) -> list[Any]:
    raw = read_utf8(path, label=label)
    if not raw.strip():
        raise TrainingDataError("the file is empty", source=label)
    if path.suffix == ".jsonl" or (path.suffix != ".json" and not raw.lstrip().startswith("[")):
        records = []
        for line_no, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TrainingDataError(f"line {line_no} is not valid JSON: {err.msg}", source=label) from err
        return records
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise TrainingDataError(f"not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}", source=label) from err
    if not isinstance(data, list):
        raise TrainingDataError(f"a .json file must hold a list of records, got {type(data).__name__}", source=label)
    return data


def _read_with_datasets(name: str, *, split: str, revision: str | None, token: str | bool | None) -> list[Any]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"{name!r} is not a local .json/.jsonl file; loading a data set by name needs the `datasets` "
            'package: pip install "transformers-stream-aligner[train]"'
        ) from err
    kwargs: dict[str, Any] = {"split": split}
    if revision is not None:
        kwargs["revision"] = revision
    if token is not None:
        kwargs["token"] = token
    return [dict(row) for row in datasets.load_dataset(name, **kwargs)]


# ---------------------------------------------------------------------------------------------- checking
def read_utf8(path: str | os.PathLike, *, label: str | None = None) -> str:
    """The text of ``path``; a file that is not UTF-8 is a :class:`TrainingDataError` naming it and the byte."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TrainingDataError(f"is not UTF-8 text ({err.reason} at byte {err.start})", source=label or os.fspath(path)) from err


def validate_records(
    records: Sequence[Any], *, source: str | None = None, tokenizer: Any | None = None
) -> list[dict[str, str]]:
    """Check every training record; return them reduced to :data:`RECORD_FIELDS`.

    A record must be an object whose ``question``, ``last`` and ``correction`` are non-empty strings and
    whose ``prefix`` is a string. With a ``tokenizer``, no field may contain the text of one of its
    special tokens (it would become a control token of the aligner prompt or target). Other keys are
    reported once in a warning and left out. Records are numbered from 0 in errors.

    Raises:
        TrainingDataError: naming the source, the record and the field.
    """
    return check_fields(records, RECORD_FIELDS, non_empty=_NON_EMPTY, source=source, tokenizer=tokenizer)


def check_fields(
    records: Sequence[Any],
    fields: Sequence[str],
    *,
    non_empty: Sequence[str] = (),
    source: str | None = None,
    tokenizer: Any | None = None,
    purpose: str = "training",
) -> list[dict[str, str]]:
    """Check that each record is an object with string ``fields`` (``non_empty`` ones not blank).

    Returns the records reduced to ``fields``; other keys are warned about once. With a ``tokenizer``,
    special-token text in any field is an error. Raises :class:`TrainingDataError` naming record and field.
    """
    specials = _special_texts(tokenizer) if tokenizer is not None else ()
    if not records:
        raise TrainingDataError("holds no records", source=source)
    clean: list[dict[str, str]] = []
    extra: dict[str, int] = {}
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise TrainingDataError(
                f"expected an object with fields {', '.join(fields)}, got {type(record).__name__}",
                source=source,
                record=index,
            )
        for name in fields:
            if name not in record:
                raise TrainingDataError("missing", source=source, record=index, field=name)
            value = record[name]
            if not isinstance(value, str):
                raise TrainingDataError(
                    f"must be a string, got {type(value).__name__} ({value!r:.60})", source=source, record=index, field=name
                )
            if name in non_empty and not value.strip():
                raise TrainingDataError("is empty", source=source, record=index, field=name)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise TrainingDataError(
                    f"is not valid Unicode text ({err.reason} at character {err.start})", source=source, record=index, field=name
                ) from err
            for special in specials:
                if special in value:
                    raise TrainingDataError(
                        f"contains the special token {special!r} of the aligner tokenizer (it would become a control "
                        "token, not text)",
                        source=source,
                        record=index,
                        field=name,
                    )
        for key in record:
            if key not in fields:
                extra[key] = extra.get(key, 0) + 1
        clean.append({name: record[name] for name in fields})
    if extra:
        logger.warning(
            "%s: ignoring field(s) not used for %s: %s",
            source or "data",
            purpose,
            ", ".join(f"{k!r} (in {n} records)" for k, n in sorted(extra.items())),
        )
    return clean


def _special_texts(tokenizer: Any) -> tuple[str, ...]:
    texts = {tokenizer.convert_ids_to_tokens(i) for i in special_token_ids(tokenizer)}
    return tuple(sorted((t for t in texts if isinstance(t, str) and t), key=len, reverse=True))


# ---------------------------------------------------------------------------------------------- tokenizing
@dataclass
class EncodingReport:
    """What :func:`encode_records` did to fit records into ``max_length``.

    Attributes:
        records: records given.
        examples: examples produced (``records - dropped``).
        truncated: records whose prefix lost leading sentences.
        dropped: records too long even with an empty prefix (indices in ``dropped_indices``).
        max_length: the limit used.
        longest: the longest example kept, in tokens.
        target_tokens: tokens with loss (correction + EOS) over all examples.
    """

    records: int = 0
    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    max_length: int | None = None
    longest: int = 0
    target_tokens: int = 0
    dropped_indices: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.examples} examples from {self.records} records (max_length={self.max_length}): "
            f"{self.truncated} with the prefix shortened from the start, {self.dropped} dropped as too long; "
            f"longest {self.longest} tokens; {self.target_tokens} target tokens"
        )


def _eos_id(tokenizer: Any) -> int:
    ids = token_id_list(getattr(tokenizer, "eos_token_id", None))
    if not ids:
        raise ValueError("the aligner tokenizer has no EOS token; the training target is the correction followed by EOS")
    return ids[0]


def encode_record(
    record: Mapping[str, str],
    tokenizer: Any,
    config: StreamAlignerConfig,
    *,
    max_length: int | None = None,
    copy_targets: bool = False,
) -> dict[str, list[int]] | None:
    """``input_ids``, ``attention_mask`` and ``labels`` of one checked record; ``None`` if it cannot fit.

    The prompt is :meth:`StreamAlignerConfig.encode_prompt`; the target is the stripped correction
    as plain text (:func:`~.tokens.tokenize_plain_text`), then EOS. Over ``max_length``, leading sentences of the prefix are
    removed (never the correction); the returned dict then has ``truncated=True`` in its ``"meta"``.

    With ``copy_targets``, ``copy_ids`` is added: beside each label, the copy token the aligner's copy bias raises
    when it predicts that label (:func:`copy_targets_of`), ``-100`` where there is none. Pure: the record and the
    tokenizer are not modified.
    """
    eos = _eos_id(tokenizer)
    target = tokenize_plain_text(tokenizer, record["correction"].strip()) + [eos]

    def prompt_for(prefix: str) -> list[int]:
        return config.encode_prompt(tokenizer, question=record["question"], prefix=prefix, last=record["last"])

    prompt = prompt_for(record["prefix"])
    truncated = False
    if max_length is not None and len(prompt) + len(target) > max_length:
        truncated = True
        sentences = split_sentences(record["prefix"], terminators=config.terminators)
        # Find the fewest leading sentences to drop (token counts shrink as sentences are dropped).
        lo, hi = 1, len(sentences)
        if len(prompt_for("")) + len(target) > max_length:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if len(prompt_for("".join(sentences[mid:]).strip())) + len(target) <= max_length:
                hi = mid
            else:
                lo = mid + 1
        prompt = prompt_for("".join(sentences[lo:]).strip())
        if len(prompt) + len(target) > max_length:  # non-monotone token counts: fall back to no prefix
            prompt = prompt_for("")
    example = {
        "input_ids": prompt + target,
        "attention_mask": [1] * (len(prompt) + len(target)),
        "labels": [IGNORE_INDEX] * len(prompt) + target,
        "meta": {"truncated": truncated, "prompt_tokens": len(prompt)},
    }
    if copy_targets:
        example["copy_ids"] = [IGNORE_INDEX] * len(prompt) + copy_targets_of(_copy_source(tokenizer, record["last"]), target)
    return example


def copy_targets_of(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """The copy token before each token of ``target`` (a correction's ids, EOS included) when ``source`` is the
    sentence being corrected (its ids as plain text, then EOS), ``-100`` where there is none: what
    :class:`~.aligner_decoding.CopyTracker` finds at inference. Pure.

    >>> from transformers_stream_aligner.training.data import copy_targets_of
    >>> source, target = [2, 3, 2, 4, 5, 6, 0], [2, 3, 2, 4, 7, 6, 0]  # "2+2=5." corrected to "2+2=7."
    >>> copy_targets_of(source, target)  # no copy after the 7 (nowhere in the source); after the ".", EOS again
    [2, 3, 2, 4, 5, -100, 0]
    """
    from ..aligners.copy_draft import CopyTracker

    copies = CopyTracker(source).peek(list(target))[:-1]
    return [IGNORE_INDEX if c is None else c for c in copies]


def _copy_source(tokenizer: Any, last: str) -> list[int]:
    """The copy source of ``last`` as the aligner builds it at inference (``StreamAligner._source_ids``)."""
    try:
        return tokenize_plain_text(tokenizer, last) + [_eos_id(tokenizer)]
    except ValueError:
        return []


def encode_records(
    records: Iterable[Mapping[str, str]],
    tokenizer: Any,
    config: StreamAlignerConfig,
    *,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "Tokenizing aligner records",
    copy_targets: bool = False,
) -> tuple[list[dict[str, list[int]]], EncodingReport]:
    """Encode checked records (see :func:`encode_record`); returns the examples and an :class:`EncodingReport`."""
    from tqdm.auto import tqdm

    records = list(records)
    report = EncodingReport(records=len(records), max_length=max_length)
    examples = []
    for index, record in enumerate(tqdm(records, desc=desc, disable=not progress or len(records) < 200)):
        example = encode_record(record, tokenizer, config, max_length=max_length, copy_targets=copy_targets)
        if example is None:
            report.dropped += 1
            report.dropped_indices.append(index)
            continue
        meta = example.pop("meta")
        report.truncated += int(meta["truncated"])
        report.longest = max(report.longest, len(example["input_ids"]))
        report.target_tokens += sum(1 for label in example["labels"] if label != IGNORE_INDEX)
        examples.append(example)
    report.examples = len(examples)
    if report.truncated or report.dropped:
        logger.warning(
            "%s%s",
            report.summary(),
            f" (dropped records: {report.dropped_indices[:10]}{' ...' if report.dropped > 10 else ''})"
            if report.dropped
            else "",
        )
    return examples, report
