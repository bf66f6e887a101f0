"""The aligner: a small causal LM that rewrites one sentence given the question and the answer so far.

:class:`StreamAligner` wraps a model, its tokenizer and a :class:`StreamAlignerConfig`. It loads from a
local directory or the Hub (safetensors only, ``trust_remote_code`` off unless passed), saves a
self-describing checkpoint (weights, tokenizer, config, model card) and pushes it as one commit.

Anything with ``correct(list[AlignmentRequest]) -> list[str]``, or a plain callable
``fn(question, prefix, last) -> str``, can stand in for it (see :func:`as_correction_fn`).

Example (an untrained aligner built from any chat model; see ``docs/quickstart.md``):

    >>> from transformers_stream_aligner import AlignmentRequest, StreamAligner
    >>> aligner = StreamAligner.from_pretrained("path/or/repo-id")  # doctest: +SKIP
    >>> aligner.correct([AlignmentRequest("What is 17*23?", "", "17*23 = 381.")])  # doctest: +SKIP
    ['17*23 = 391.']
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import PushToHubMixin

from ..hub import create_repo, upload_directory
from ..runtime.aligner_call import (
    AlignmentRequest,
    CorrectionFn,
    RejectedCorrection,
    SupportsCorrect,
    UnfinishedCorrection,
    as_correction_fn,
)
from ..tokens import token_id_list, tokenize_plain_text
from .adapter import ADAPTER_NAME, AdapterSwitch
from .calculator import calculate
from .config import StreamAlignerConfig
from .edits import EditRuleStoppingCriteria, correct_with_rule, edits_numbers_only, numbers_only_stop_rule
from .pretrained import attach_pretrained, load_pretrained, save_weights

logger = logging.getLogger(__name__)

__all__ = [
    "AlignmentRequest",
    "CorrectionFn",
    "RejectedCorrection",
    "StreamAligner",
    "SupportsCorrect",
    "UnfinishedCorrection",
    "as_correction_fn",
    "finish_correction",
]

# Keywords of StreamAligner.push_to_hub, which save_pretrained(push_to_hub=True) takes too.
_HUB_OPTIONS = ("commit_message", "commit_description", "private", "token", "revision", "create_pr")


def finish_correction(text: str, sentence: str, config: StreamAlignerConfig, *, unfinished: bool) -> str:
    """The aligner stage's last steps for one decoded correction (``text``, of ``sentence``), for every aligner that
    decodes a model (:class:`StreamAligner`, :class:`~.vllm_aligner.VLLMAligner`): the token limit
    (:class:`UnfinishedCorrection`), ``config.edits`` (:class:`RejectedCorrection`, :mod:`.aligner_edits`), then
    ``config.calculator`` (:mod:`.aligner_calculator`). Pure.

    >>> config = StreamAlignerConfig(calculator=True, edits="numbers")
    >>> finish_correction("So 45+19 = <<45+19=54>>.", "So 45+19 = 54.", config, unfinished=False)
    'So 45+19 = 64.'
    >>> type(finish_correction("Thus 45+19 = <<45+19=54>>.", "So 45+19 = 54.", config, unfinished=False)).__name__
    'RejectedCorrection'
    """
    if unfinished:
        logger.warning("aligner correction of %r reached max_correction_tokens=%d without an EOS; it is cut there",
                       sentence[:80], config.max_correction_tokens)  # fmt: skip
        return UnfinishedCorrection(text)
    if config.edits == "numbers" and not edits_numbers_only(text, sentence):
        logger.warning("aligner correction of %r changes more than numbers (edits='numbers'): %r; keeping the sentence",
                       sentence[:80], text[:120])  # fmt: skip
        return RejectedCorrection(sentence, correction=text)
    if config.calculator:
        return calculate(text, sentence)
    return text


class StreamAligner(PushToHubMixin):
    """A sentence-level aligner model with its tokenizer and prompt configuration.

    Args:
        model: a causal LM (``AutoModelForCausalLM``-compatible).
        tokenizer: its tokenizer.
        config: prompt/decoding settings; ``None`` uses the reference defaults.
        adapter_name: the aligner is this peft adapter of ``model`` (loaded with ``model.load_adapter``), on for the
            aligner's calls and off for every other forward of ``model``: one copy of the weights serves the upstream
            and the aligner (:mod:`.aligner_adapter`; **mutates** ``model``: the adapter is switched off).
            :meth:`from_pretrained` with ``base_model=`` does the loading.
    """

    def __init__(
        self, model: Any, tokenizer: Any, config: StreamAlignerConfig | None = None, *, adapter_name: str | None = None
    ) -> None:
        if tokenizer is None:
            raise ValueError("StreamAligner needs the aligner's tokenizer")
        self._adapter: Any = None  # AdapterSwitch of a one-copy aligner
        if adapter_name is not None:
            switch = getattr(model, "_stream_aligner_switch", None)
            if switch is not None and switch.adapter_name == adapter_name:
                self._adapter = switch
            else:
                self._adapter = AdapterSwitch(model, adapter_name)
        self.model = model
        self.tokenizer = tokenizer
        self.config = config if config is not None else StreamAlignerConfig()
        #: Training facts for the model card (set by :func:`train_aligner`; ``None`` otherwise).
        self.training_facts: dict[str, Any] | None = None
        # The aligner stops at any EOS of its generation config or its tokenizer.
        self._eos_token_ids = token_id_list(
            getattr(getattr(model, "generation_config", None), "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)
        )
        if getattr(self.tokenizer, "pad_token_id", None) is None:
            # Batched prompts need a pad token; like most recipes, reuse EOS (this sets it on the tokenizer).
            if getattr(self.tokenizer, "eos_token", None) is None:
                raise ValueError("the aligner tokenizer has neither a pad token nor an EOS token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._pad_token_id = self.tokenizer.pad_token_id
        self._decoder: Any = None  # AlignerDecoder, built on first use (see _fast_decoder)
        self._decoder_lock = threading.Lock()
        self._fallback_reason: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        device_map: Any = None,
        dtype: Any = None,
        trust_remote_code: bool = False,
        config: StreamAlignerConfig | None = None,
        base_model_name_or_path: str | os.PathLike | None = None,
        base_model: Any = None,
        **model_kwargs: Any,
    ) -> StreamAligner:
        """Load an aligner from a local directory or a Hub repo id.

        A checkpoint without ``stream_aligner_config.json`` (a plain causal LM, e.g. an existing
        aligner checkpoint) loads with the reference defaults. Weights load from safetensors only.
        A LoRA adapter checkpoint (``adapter_config.json``, as ``stream-aligner train --lora`` writes)
        loads onto the base model its config names (needs ``peft``), or onto ``base_model_name_or_path``, or
        onto ``base_model``, a model you already have loaded (one copy of the weights; see below).

        **One copy of the weights.** When the adapter was trained on the upstream's own base, pass the upstream as
        ``base_model``: the adapter is added to it (**mutating** it, as ``model.load_adapter`` does) and switched off,
        on only while this aligner corrects (:mod:`.aligner_adapter`). The upstream's own tokens stay those of the
        plain model, the corrections those of the aligner loaded as a second copy, and no second copy is loaded::

            model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
            aligner = StreamAligner.from_pretrained("examples/arithmetic/trained_aligner", base_model=model)
            model.generate(**inputs, aligner=aligner)

        Args:
            pretrained_model_name_or_path: directory or Hub repo id.
            revision, token, cache_dir, local_files_only: as in ``transformers``.
            device: move the model there after loading (mutually exclusive with ``device_map``).
            device_map, dtype: passed to ``AutoModelForCausalLM.from_pretrained``.
            trust_remote_code: off unless you pass ``True``.
            config: override the saved :class:`StreamAlignerConfig`.
            base_model_name_or_path: for an adapter checkpoint, the base model to load it onto (default:
                ``base_model_name_or_path`` in its ``adapter_config.json``).
            base_model: for an adapter checkpoint, a loaded model to put it on (one copy, see above); used as it is
                (``device``, ``device_map``, ``dtype`` and model keywords are refused with it).
            **model_kwargs: further keywords for ``AutoModelForCausalLM.from_pretrained``.
        """

        if device is not None and device_map is not None:
            raise ValueError("pass either device or device_map, not both")
        if model_kwargs.get("use_safetensors") is False:
            raise ValueError("StreamAligner loads safetensors weights only (use_safetensors=False is refused)")
        model_kwargs.pop("use_safetensors", None)
        if base_model is not None:
            return cls._from_adapter_on(
                base_model, pretrained_model_name_or_path, config=config, trust_remote_code=trust_remote_code,
                others={"device": device, "device_map": device_map, "dtype": dtype,
                        "base_model_name_or_path": base_model_name_or_path, **model_kwargs},
                hub_kwargs={"revision": revision, "token": token, "cache_dir": cache_dir,
                            "local_files_only": local_files_only},
            )  # fmt: skip
        hub_kwargs = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
        load_kwargs = {**model_kwargs, **({"dtype": dtype} if dtype is not None else {}),
                       **({"device_map": device_map} if device_map is not None else {})}  # fmt: skip
        model, tokenizer, config = load_pretrained(
            pretrained_model_name_or_path, config=config, hub_kwargs=hub_kwargs, load_kwargs=load_kwargs,
            trust_remote_code=trust_remote_code, base_model_name_or_path=base_model_name_or_path,
        )  # fmt: skip
        if device is not None:
            model = model.to(device)
        model.eval()
        return cls(model, tokenizer, config)

    @classmethod
    def _from_adapter_on(
        cls,
        base_model: Any,
        adapter: str | os.PathLike,
        *,
        config: StreamAlignerConfig | None,
        trust_remote_code: bool,
        others: dict[str, Any],
        hub_kwargs: dict[str, Any],
    ) -> StreamAligner:
        """The one-copy route of :meth:`from_pretrained`: the adapter checkpoint ``adapter`` on ``base_model``
        (**mutated**: it gets the adapter, switched off)."""
        switch, tokenizer, config = attach_pretrained(base_model, adapter, config=config, others=others,
                                                      hub_kwargs=hub_kwargs, trust_remote_code=trust_remote_code)  # fmt: skip
        try:
            return cls(base_model, tokenizer, config, adapter_name=ADAPTER_NAME)
        except Exception:
            switch.remove()  # the model as it was: no adapter left behind by a failed load
            raise

    @property
    def adapter_switch(self) -> Any:
        """The :class:`~.aligner_adapter.AdapterSwitch` of a one-copy aligner (its adapter lives on the upstream
        model), else ``None``."""
        return self._adapter

    # ------------------------------------------------------------------ saving and the Hub
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Write model (safetensors), tokenizer, ``stream_aligner_config.json`` and a model card; the symmetric
        counterpart of :meth:`from_pretrained`.

        A peft model (or one with a loaded adapter) saves its adapter only, which loads back onto its base. With
        ``push_to_hub=True`` the directory is also uploaded to ``repo_id`` (default: the directory's name) in one
        commit, with the options of :meth:`push_to_hub` from ``kwargs``; returns that commit's ``CommitInfo``, else
        ``None``. Other ``kwargs`` go to the model's ``save_pretrained``.
        """
        hub = {name: kwargs.pop(name) for name in _HUB_OPTIONS if name in kwargs}
        os.makedirs(save_directory, exist_ok=True)
        self._save_model(save_directory, kwargs)
        self.tokenizer.save_pretrained(save_directory)
        self.config.save_pretrained(save_directory)
        if not push_to_hub:
            self.model_card().save(os.path.join(save_directory, "README.md"))
            return None
        return self._push_directory(save_directory, repo_id or Path(save_directory).resolve().name, hub)

    def _save_model(self, directory: str | os.PathLike, kwargs: dict[str, Any]) -> None:
        save_weights(self.model, directory, self._adapter, kwargs)

    def model_card(self, repo_id: str | None = None) -> Any:
        """A ``huggingface_hub.ModelCard`` describing this aligner (library, tags, base model, template, usage)."""
        from .model_card import build_model_card

        return build_model_card(self, repo_id=repo_id)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> Any:
        """Upload weights, tokenizer, config and model card to ``repo_id`` (created if needed) in one commit, on
        branch ``revision`` (created if needed) or as a pull request. Returns the ``CommitInfo``.

        This is ``transformers``' ``PushToHubMixin.push_to_hub`` with this aligner's own model card (the stock one
        would fetch or template a generic card).
        """
        options = dict(commit_message=commit_message, commit_description=commit_description, private=private,
                       token=token, revision=revision, create_pr=create_pr)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            return self.save_pretrained(tmp, push_to_hub=True, repo_id=repo_id, **options)

    def _push_directory(self, directory: str | os.PathLike, repo_id: str, options: dict[str, Any]) -> Any:
        """Create ``repo_id`` if needed, write the model card for it into ``directory`` (**mutated**) and upload the
        directory in one commit (:mod:`.hub`). ``options``: those of :meth:`push_to_hub`."""
        token = options.get("token")
        repo_id = create_repo(repo_id, private=options.get("private"), token=token)
        self.model_card(repo_id=repo_id).save(os.path.join(directory, "README.md"))
        return upload_directory(
            directory,
            repo_id,
            commit_message=options.get("commit_message") or "Upload Stream Aligner checkpoint",
            commit_description=options.get("commit_description"),
            token=token,
            revision=options.get("revision"),
            create_pr=options.get("create_pr") or False,
        )

    # ------------------------------------------------------------------ prompting and correcting
    def build_prompt(self, request: AlignmentRequest) -> str:
        """The aligner's full input text for one request (instruction template + chat wrapper)."""
        return self.config.build_prompt(
            question=request.question, prefix=request.prefix, last=request.last, tokenizer=self.tokenizer
        )

    def _encode_prompt(self, request: AlignmentRequest) -> list[int]:
        """The prompt ids the aligner reads for ``request`` (:meth:`StreamAlignerConfig.encode_prompt`: the request's
        text is plain text, never control tokens)."""
        return self.config.encode_prompt(self.tokenizer, question=request.question, prefix=request.prefix, last=request.last)

    @torch.no_grad()
    def correct(self, requests: Sequence[AlignmentRequest], *, batch_size: int | None = None) -> list[str]:
        """Correct a batch of sentences; returns one corrected sentence per request.

        The prompts are decoded together (greedy unless the config says otherwise); each stops at the
        aligner's own EOS. Returned text has no special tokens and no surrounding whitespace.

        A correction that reached ``max_correction_tokens`` without an EOS is returned as an
        :class:`UnfinishedCorrection` (generation keeps the original sentence then); one that breaks the config's
        edit rule, as a :class:`RejectedCorrection` (the sentence itself).

        Greedy decoding drafts from the sentence being corrected and keeps the KV cache between calls
        (``copy_draft_tokens``, ``reuse_kv_cache``; see :mod:`.aligner_decoding`), with exactly the
        tokens the stock ``generate`` would give; sampling and unsupported models use ``generate``.

        A sentence the config's edit rule can only keep (``edits="numbers"`` and no digit in it,
        :func:`~.aligner_edits.kept_by_rule`) is answered without the model: it is what the model's
        correction would come to anyway.
        """
        requests = list(requests)
        if not requests:
            return []
        for i, r in enumerate(requests):
            if not isinstance(r, AlignmentRequest):
                raise TypeError(f"requests[{i}] must be an AlignmentRequest, got {type(r).__name__}")

        def batches(todo: list[AlignmentRequest]) -> list[str]:
            step = batch_size or len(todo)
            return [out for begin in range(0, len(todo), step) for out in self._correct_batch(todo[begin : begin + step])]

        return correct_with_rule(self.config.edits, requests, batches)

    def reset_cache(self) -> None:
        """Drop the KV cache kept between :meth:`correct` calls (see ``StreamAlignerConfig.reuse_kv_cache``)."""
        with self._decoder_lock:
            if self._decoder is not None:
                self._decoder.reset()

    @property
    def decoding_stats(self) -> Any:
        """Work counters of the fast greedy decoder (``AlignerDecodingStats``), ``None`` before its first use."""
        return None if self._decoder is None else self._decoder.stats

    def _fast_decoder(self) -> Any:
        """The :class:`~.aligner_decoding.AlignerDecoder` for this aligner, or ``None`` when the stock
        ``generate`` must decode (sampling, both speed-ups off, an unsupported model or logits processors)."""
        from .decoding import AlignerDecoder

        config = self.config
        if config.do_sample or (config.copy_draft_tokens == 0 and not config.reuse_kv_cache):
            return None
        if self._decoder is None:
            reason = AlignerDecoder.unsupported_reason(self.model)
            if reason is None and not AlignerDecoder.greedy_is_argmax(getattr(self.model, "generation_config", None)):
                reason = "its generation_config adds logits processors to greedy decoding"
            if reason is not None:
                if self._fallback_reason is None:
                    logger.info("aligner: copy speculation and KV reuse are off (%s); using generate()", reason)
                self._fallback_reason = reason
                return None
            self._decoder = AlignerDecoder(
                self.model, eos_token_ids=self._eos_token_ids or [self._pad_token_id], pad_token_id=self._pad_token_id
            )
        self._decoder.num_draft_tokens = config.copy_draft_tokens
        self._decoder.copy_bias = config.copy_bias
        if self._decoder.reuse_cache and not config.reuse_kv_cache:
            self._decoder.reset()
        self._decoder.reuse_cache = config.reuse_kv_cache
        return self._decoder

    def _source_ids(self, last: str) -> list[int]:
        """The draft for copy speculation: the sentence's tokens as plain text, then the EOS a copy would end with
        (no draft when the sentence cannot be plain text; the draft only ever saves forwards)."""
        try:
            ids = tokenize_plain_text(self.tokenizer, last)
        except ValueError:
            return []
        eos = self.tokenizer.eos_token_id
        if eos is None or eos not in self._eos_token_ids:
            eos = self._eos_token_ids[0] if self._eos_token_ids else None
        return ids + ([eos] if eos is not None else [])

    def _correct_batch(self, requests: list[AlignmentRequest]) -> list[str]:
        tok = self.tokenizer
        limit = self.config.max_correction_tokens
        # A one-copy aligner: its adapter on for these forwards only (other threads' forwards wait), the decoder's
        # support probe (its first use) included.
        adapter_on = self._adapter.enabled() if self._adapter is not None else contextlib.nullcontext()
        rules = [numbers_only_stop_rule(tok, r.last) for r in requests] if self.config.edits == "numbers" else None
        with adapter_on:
            decoder = self._fast_decoder()
            if decoder is not None:
                prompts = [self._encode_prompt(r) for r in requests]
                sources = [self._source_ids(r.last) for r in requests]
                with self._decoder_lock:
                    outputs = decoder.generate(prompts, sources=sources, max_new_tokens=limit, stop_rules=rules)
            else:
                outputs = self._generate_batch(requests, stop_rules=rules)
        eos = set(self._eos_token_ids)
        texts = [t.strip() for t in tok.batch_decode(outputs, skip_special_tokens=True)]
        for i, (output, request) in enumerate(zip(outputs, requests, strict=True)):
            texts[i] = finish_correction(texts[i], request.last, self.config,
                                         unfinished=len(output) >= limit and not eos.intersection(output))  # fmt: skip
        return texts

    def _generate_batch(self, requests: list[AlignmentRequest], *, stop_rules: list[Any] | None = None) -> list[list[int]]:
        """Plain batched decoding with the stock ``generate`` (left-padded prompts); new tokens per row. ``stop_rules``
        (the edit rule's, one per request) end a row early, as :class:`~.aligner_decoding.AlignerDecoder` does."""
        tok = self.tokenizer
        prompts = [self._encode_prompt(r) for r in requests]
        # padding_side per call: the tokenizer may be shared by other threads, so its attributes are never changed.
        enc = tok.pad({"input_ids": prompts}, padding_side="left", return_attention_mask=True, return_tensors="pt")
        device = getattr(self.model, "device", None)
        if device is not None:
            enc = {k: v.to(device) for k, v in enc.items()}
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": self.config.max_correction_tokens,
            "do_sample": self.config.do_sample,
            "pad_token_id": self._pad_token_id,
        }
        if self._eos_token_ids:
            gen_kwargs["eos_token_id"] = self._eos_token_ids
        if self.config.do_sample:
            gen_kwargs["temperature"] = self.config.temperature
            gen_kwargs["top_p"] = self.config.top_p
        else:
            gen_kwargs["temperature"] = None
            gen_kwargs["top_p"] = None
            gen_kwargs["top_k"] = None
        if self.config.copy_bias:
            from transformers import LogitsProcessorList

            from .copy_draft import CopyBiasLogitsProcessor

            sources = [self._source_ids(r.last) for r in requests]
            gen_kwargs["logits_processor"] = LogitsProcessorList(
                [CopyBiasLogitsProcessor(sources, self.config.copy_bias, prompt_length=enc["input_ids"].shape[1])]
            )
        if stop_rules is not None:
            from transformers import StoppingCriteriaList

            gen_kwargs["stopping_criteria"] = StoppingCriteriaList(
                [EditRuleStoppingCriteria(stop_rules, prompt_length=enc["input_ids"].shape[1])]
            )
        # The aligner may be the same model object as a stream-aligned upstream: call the stock generate.
        from transformers import GenerationMixin

        out = GenerationMixin.generate(self.model, **enc, **gen_kwargs)
        eos = set(self._eos_token_ids)
        rows = []
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            # Rows that ended early are padded after their EOS: keep up to the EOS.
            end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            rows.append(row[:end])
        return rows

    def __repr__(self) -> str:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", None) or type(self.model).__name__
        adapter = "" if self._adapter is None else f", adapter_name={self._adapter.adapter_name!r}"
        return f"StreamAligner(model={name!r}{adapter}, config={self.config!r})"
