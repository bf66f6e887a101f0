r"""`StreamAlignerConfig`: how an aligner is prompted and decoded, saved next to its weights.

The same config builds the aligner prompt at inference (:meth:`StreamAligner.build_prompt`) and at
training time, so a checkpoint always carries the exact template it was trained with. It is saved as
``stream_aligner_config.json`` beside the model's ``config.json`` (peft-style: one JSON file per concept,
``save_pretrained`` / ``from_pretrained`` symmetric, unknown keys warned about and kept out; ``push_to_hub`` from
``transformers``' ``PushToHubMixin``, as peft's configs have it).

Example:

    >>> from transformers_stream_aligner import GEMMA_WRAPPER, StreamAlignerConfig
    >>> config = StreamAlignerConfig(prompt_wrapper=GEMMA_WRAPPER)
    >>> config.build_prompt(question="Q?", prefix="A.", last="B.")
    '<start_of_turn>user\n##Question: Q? | ##Answer_Prefix: A. | ##Answer_Last_Sentence: B. | ##Your_Revision: <end_of_turn>\n<start_of_turn>model'
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers.utils import PushToHubMixin

from ..runtime.boundary.splitter import DEFAULT_TERMINATORS
from ..runtime.boundary.tracker import DEFAULT_MAX_SENTENCE_TOKENS
from .edits import EDITS

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_NAME",
    "GEMMA_WRAPPER",
    "REFERENCE_INSTRUCTION_TEMPLATE",
    "StreamAlignerConfig",
]

CONFIG_NAME = "stream_aligner_config.json"

#: The reference user turn, verbatim (note the trailing space).
REFERENCE_INSTRUCTION_TEMPLATE = (
    "##Question: {question} | ##Answer_Prefix: {prefix} | ##Answer_Last_Sentence: {last} | ##Your_Revision: "
)
#: The reference code's hand-written Gemma turn markers (no newline after ``model``; BOS from the tokenizer).
GEMMA_WRAPPER = "<start_of_turn>user\n{instruction}<end_of_turn>\n<start_of_turn>model"

_INSTRUCTION_FIELDS = ("question", "prefix", "last")
_REQUIRED_FIELDS = ("last",)
_PLACEHOLDER = re.compile(r"\{(question|prefix|last|instruction)\}")


def _fill(template: str, values: dict[str, str]) -> str:
    """Substitute ``{name}`` placeholders in one pass (values are never re-scanned, braces elsewhere kept)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def _wrapper_chat_template(wrapper: str) -> str:
    """A Jinja chat template that renders ``wrapper`` with the first message's content for ``{instruction}``: the
    wrapper's text as string literals (so ``apply_chat_template`` counts its markers as the template's own control
    tokens), the message as a variable (so ``sanitize_control_tokens`` makes it plain text)."""
    pieces = wrapper.split("{instruction}")
    literal = ["{{ " + json.dumps(piece, ensure_ascii=False) + " }}" if piece else "" for piece in pieces]
    return "{{ messages[0]['content'] }}".join(literal)


def _special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's ``add_special_tokens=True`` puts before and after a text (e.g. ``([bos], [])``)."""
    probe = "a"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ValueError(f"cannot tell which special tokens {type(tokenizer).__name__} adds around a text")


@dataclass
class StreamAlignerConfig(PushToHubMixin):
    """Prompt, decoding and sentence settings of a Stream Aligner checkpoint.

    Args:
        instruction_template: the aligner's user turn, with a ``{last}`` placeholder (the sentence to correct)
            and, for an aligner that reads its context, ``{question}`` and ``{prefix}``. Defaults to the reference
            template.
        prompt_wrapper: how the instruction becomes the model's input text.
            ``None`` (default): the aligner tokenizer's chat template (one user turn plus the generation
            prompt); a tokenizer without a chat template gets the instruction as plain text.
            A string with an ``{instruction}`` placeholder is used verbatim, e.g. :data:`GEMMA_WRAPPER`
            for the reference checkpoints. ``""`` is not allowed; use ``"{instruction}"`` for plain text.
        system_prompt: optional system message when the chat template is used.
        add_special_tokens: whether tokenizing the prompt adds the tokenizer's special tokens (BOS). ``None``
            (default) means: no for a chat template (it writes its own), yes for a raw wrapper.
        max_correction_tokens: upper bound on tokens the aligner may write for one sentence; corrections
            longer than this are rejected by stream-aligned generation.
        do_sample, temperature, top_p: the aligner's decoding (greedy by default).
        copy_draft_tokens: greedy decoding drafts up to this many tokens per forward from the sentence being
            corrected (copy speculation; exact). ``0`` turns it off.
        reuse_kv_cache: keep the aligner's KV cache between calls and feed only what a new prompt does
            not share with a cached one (exact). Both speed-ups apply to greedy decoding of models with a
            plain attention cache (see :mod:`.aligner_decoding`); otherwise the stock ``generate`` runs.
        copy_bias: added to the logit of the *copy token* (the token of the sentence being corrected that
            continues copying it, :class:`~.aligner_decoding.CopyTracker`) at every step of the aligner's decoding,
            greedy or sampled. ``0.0`` (default) changes nothing; a positive bias makes the aligner change a sentence
            only where it is confident, trading corrections for precision (the "confidence bias" of GECToR's KEEP
            tag). Tune it on held-in data; a checkpoint's ``stream_aligner_config.json`` stores the one it is decoded with.
        calculator: the aligner writes the results it checks as calculations, ``<<expression=stated>>``, and
            :mod:`.aligner_calculator` evaluates them: a right stated result is kept as written, a wrong one is
            replaced by the value (for aligners trained on such corrections; a correction with a calculation that
            cannot be evaluated keeps the original sentence). ``False`` (default): the aligner's text is used as is.
        edits: which edits the aligner may make (:mod:`.aligner_edits`). ``"any"`` (default): any. ``"numbers"``:
            only numbers (and calculations) may differ from the sentence; a correction that changes anything else is
            a copy error, and the sentence is kept (a :class:`~.aligner.RejectedCorrection`); greedy decoding stops
            such a correction as soon as it breaks the rule.
        terminators: characters that end a sentence.
        max_sentence_tokens: an upstream sentence that reaches this many tokens without ending is cut there
            (at the first boundary between two characters from there on) and aligned as it is (text that never
            ends a sentence cannot stall alignment).
        base_model: the model the aligner was trained from (for the model card), if known.
    """

    instruction_template: str = REFERENCE_INSTRUCTION_TEMPLATE
    prompt_wrapper: str | None = None
    system_prompt: str | None = None
    add_special_tokens: bool | None = None
    max_correction_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    copy_draft_tokens: int = 32
    reuse_kv_cache: bool = True
    copy_bias: float = 0.0
    calculator: bool = False
    edits: str = "any"
    terminators: str = DEFAULT_TERMINATORS
    max_sentence_tokens: int = DEFAULT_MAX_SENTENCE_TOKENS
    base_model: str | None = None
    library_version: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the problem when a field is unusable (a wrong type included: a config read
        from JSON fails here, not later inside ``generate()``)."""
        self._check_types()
        missing = [name for name in _REQUIRED_FIELDS if "{" + name + "}" not in self.instruction_template]
        if missing:
            raise ValueError(
                "StreamAlignerConfig.instruction_template is missing the placeholder(s) "
                + ", ".join("{" + m + "}" for m in missing)
                + f": {self.instruction_template!r}"
            )
        if self.prompt_wrapper is not None and "{instruction}" not in self.prompt_wrapper:
            raise ValueError(
                "StreamAlignerConfig.prompt_wrapper is missing the placeholder {instruction}: "
                f"{self.prompt_wrapper!r} (use None for the tokenizer's chat template)"
            )
        if self.max_correction_tokens < 1:
            raise ValueError(f"max_correction_tokens must be >= 1, got {self.max_correction_tokens}")
        if self.copy_draft_tokens < 0:
            raise ValueError(f"copy_draft_tokens must be >= 0, got {self.copy_draft_tokens}")
        if not 0 <= self.copy_bias < float("inf"):
            raise ValueError(f"copy_bias must be a finite number >= 0, got {self.copy_bias}")
        if self.edits not in EDITS:
            raise ValueError(f"edits must be one of {', '.join(map(repr, EDITS))}, got {self.edits!r}")
        if self.max_sentence_tokens < 2:
            raise ValueError(f"max_sentence_tokens must be >= 2, got {self.max_sentence_tokens}")
        if not self.terminators:
            raise ValueError("terminators must name at least one character")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1], got {self.temperature} and {self.top_p}")

    def _check_types(self) -> None:
        """Every field against its annotation (``bool`` is not an ``int`` here; an ``int`` is a valid ``float``)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
            if value is None and type(None) in allowed:
                continue
            ok = any(
                isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
                for kind in (*allowed, *((int,) if float in allowed else ()))
                if isinstance(kind, type) and kind is not type(None)
            )
            if not ok:
                names = " or ".join("None" if k is type(None) else k.__name__ for k in allowed)
                raise ValueError(f"StreamAlignerConfig.{f.name} must be {names}, got {type(value).__name__} {value!r}")

    # ------------------------------------------------------------------ prompt text
    def format_instruction(self, *, question: str, prefix: str, last: str) -> str:
        """The user turn for one sentence (placeholders filled, nothing else touched)."""
        return _fill(self.instruction_template, {"question": question, "prefix": prefix, "last": last})

    def wrap(self, instruction: str, tokenizer: Any | None = None) -> str:
        """Turn an instruction into the aligner's input text (see ``prompt_wrapper``)."""
        if self.prompt_wrapper is not None:
            return _fill(self.prompt_wrapper, {"instruction": instruction})
        if self.uses_chat_template(tokenizer):
            return tokenizer.apply_chat_template(self._messages(instruction), tokenize=False, add_generation_prompt=True)
        return instruction

    def build_prompt(self, *, question: str, prefix: str, last: str, tokenizer: Any | None = None) -> str:
        """The aligner's full input text for one sentence: instruction template, then the wrapper (for display and
        model cards; the model reads :meth:`encode_prompt`)."""
        return self.wrap(self.format_instruction(question=question, prefix=prefix, last=last), tokenizer)

    def encode_prompt(self, tokenizer: Any, *, question: str, prefix: str, last: str) -> list[int]:
        """Token ids of :meth:`build_prompt`, as the aligner reads them at inference and training alike.

        The instruction (the user turn, filled with ``question``, ``prefix`` and ``last``, which come from users and
        models) is plain text: a control-token string in it such as ``"<|im_end|>"`` is encoded as ordinary text, so
        only the markers of the chat template or ``prompt_wrapper`` are control tokens. This is ``transformers``'
        ``apply_chat_template(..., sanitize_control_tokens=True)``; a ``prompt_wrapper`` is rendered as a one-message
        chat template for it. Text without control-token strings gets the ids plain tokenization gives. Does not
        mutate the tokenizer (safe to share across threads).
        """
        instruction = self.format_instruction(question=question, prefix=prefix, last=last)
        chat = self.uses_chat_template(tokenizer)
        ids = tokenizer.apply_chat_template(
            self._messages(instruction) if chat else [{"role": "user", "content": instruction}],
            chat_template=None if chat else _wrapper_chat_template(self.prompt_wrapper or "{instruction}"),
            add_generation_prompt=chat,
            tokenize=True,
            return_dict=False,
            sanitize_control_tokens=True,
        )
        ids = list(ids)
        if self.prompt_adds_special_tokens(tokenizer):
            head, tail = _special_tokens_around(tokenizer)
            ids = head + ids + tail
        return ids

    def _messages(self, instruction: str) -> list[dict[str, str]]:
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        return messages + [{"role": "user", "content": instruction}]

    def uses_chat_template(self, tokenizer: Any | None) -> bool:
        return self.prompt_wrapper is None and tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))

    def prompt_adds_special_tokens(self, tokenizer: Any | None) -> bool:
        if self.add_special_tokens is not None:
            return self.add_special_tokens
        return not self.uses_chat_template(tokenizer)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamAlignerConfig:
        """Build a config from a dict; unknown keys are warned about and ignored (never silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning(
                "StreamAlignerConfig: ignoring unknown key(s) %s (written by a newer version or a typo?)",
                ", ".join(unknown),
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, **kwargs: Any) -> str:
        """Write ``stream_aligner_config.json`` into ``save_directory`` and return its path.

        With ``push_to_hub=True`` it is also uploaded to ``kwargs["repo_id"]`` (default: the directory's name) with
        ``commit_message``, ``private``, ``token`` and ``create_pr`` from ``kwargs`` (``transformers``' convention).
        """
        from ..version import __version__

        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        data = self.to_dict()
        data["library_version"] = __version__
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        if push_to_hub:
            from ..hub import create_repo, upload_directory

            token = kwargs.get("token")
            repo_id = create_repo(kwargs.pop("repo_id", os.path.basename(os.path.abspath(save_directory))),
                                  private=kwargs.pop("private", None), token=token)  # fmt: skip
            upload_directory(save_directory, repo_id, token=token, create_pr=kwargs.pop("create_pr", False),
                             commit_message=kwargs.pop("commit_message", None) or "Upload stream_aligner_config.json")  # fmt: skip
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> StreamAlignerConfig:
        """Read a config file; any problem with it (not UTF-8, not JSON, a wrong type or value) is a ``ValueError``
        that names the file."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text: {err}") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        subfolder: str = "",
    ) -> StreamAlignerConfig | None:
        """Load ``stream_aligner_config.json`` from a directory or a Hub repo.

        Returns ``None`` when the checkpoint has no such file (a plain causal-LM aligner checkpoint):
        the caller then uses the reference defaults.
        """
        from transformers.utils import cached_file

        resolved = cached_file(
            pretrained_model_name_or_path,
            CONFIG_NAME,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            subfolder=subfolder,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        if resolved is None:
            return None
        return cls.from_json_file(resolved)
