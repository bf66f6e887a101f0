"""`VLLMEngine`: the upstream is a vLLM OpenAI-compatible server (``/v1/completions`` with token ids).

Each round streams every row's continuation from the server (one request per row, all at once, so vLLM batches
them): the prompt is the row's ids (prompt, accepted sentences, corrected text, pending tokens), the stream returns
token ids (``return_token_ids``), and the same :class:`~..boundary.SentenceTracker` as the transformers engine finds
the sentence end; the request is then ended by closing its stream (vLLM aborts it). A correction needs no cache work
here: the next request's prompt holds the corrected text, and vLLM's prefix cache supplies the KV of its unchanged
blocks. Greedy decoding is exact (the continuation of a resubmitted prefix is the continuation of the first run);
sampling is not reproducible across requests.

The client is ``httpx`` (``pip install httpx``; the core package does not need it). vLLM itself runs in its own
environment (``make test-vllm`` builds one): nothing here imports vLLM.

Example:

    >>> from transformers_stream_aligner.engines.vllm_engine import VLLMUpstream, stream_aligned_completion
    >>> upstream = VLLMUpstream("http://127.0.0.1:8000", model="smol")  # doctest: +SKIP
    >>> out = stream_aligned_completion(upstream, [prompt_ids], aligner=fn, tokenizer=tok, max_new_tokens=100)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..boundary import SentenceTracker
from .base import RoundOutcome, UpstreamEngine

if TYPE_CHECKING:
    from ..loop import RowState
    from ..outputs import AlignmentStats

__all__ = ["VLLMEngine", "VLLMUpstream", "VLLMUpstreamError", "stream_aligned_completion"]


class VLLMUpstreamError(RuntimeError):
    """The vLLM server could not be reached, answered with an error, or its stream broke off."""


@dataclass
class VLLMUpstream:
    """Where the upstream runs and how to sample from it.

    Attributes:
        base_url: the server, e.g. ``"http://127.0.0.1:8000"``.
        model: the served model name (``--served-model-name``).
        timeout: seconds to wait for the server (connect and each read).
        sampling: extra ``/v1/completions`` fields (default greedy: ``{"temperature": 0}``).
        api_key: sent as a bearer token if the server wants one.
    """

    base_url: str
    model: str
    timeout: float = 60.0
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0})
    api_key: str | None = None

    def client(self) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.base_url.rstrip("/"), timeout=self.timeout, headers=headers)


class VLLMEngine(UpstreamEngine):
    """The engine seam over a vLLM server (see the module docstring). Stateless between rounds: the server's prefix
    cache is its memory, so :meth:`replace_tail` and :meth:`drop_rows` have nothing to forget. Rows that wait for
    the aligner do not draft."""

    def __init__(
        self,
        upstream: VLLMUpstream,
        rows: Sequence[RowState],
        *,
        tokenizer: Any,
        stats: AlignmentStats,
        terminators: str,
        max_sentence_tokens: int,
        eos_token_ids: Iterable[int],
    ) -> None:
        self.upstream = upstream
        self.tokenizer = tokenizer
        self.stats = stats
        self.terminators = terminators
        self.max_sentence_tokens = max_sentence_tokens
        self.eos_token_ids = sorted(eos_token_ids)
        self._client = upstream.client()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(rows)), thread_name_prefix="vllm-row")

    # ------------------------------------------------------------------ the seam
    def run_round(self, rows: Sequence[RowState], drafting: Sequence[RowState]) -> dict[int, RoundOutcome]:
        outcomes = dict(zip([row.index for row in rows], self._pool.map(self._continue, rows), strict=True))
        self.stats.upstream_real_tokens += sum(len(outcome.tokens) for outcome in outcomes.values())
        outcomes.update({row.index: RoundOutcome([]) for row in drafting})
        self.stats.rounds += 1
        return outcomes

    def replace_tail(self, row: RowState, keep: int) -> None:
        pass  # the next request's prompt is the corrected row; vLLM's prefix cache keeps the common blocks

    def drop_rows(self, rows: Iterable[RowState]) -> None:
        pass

    def close(self) -> Any:
        self._pool.shutdown(wait=True)  # rows of a failed round finish or fail; none is left streaming
        self._client.close()
        return None

    # ------------------------------------------------------------------ one row
    def _continue(self, row: RowState) -> RoundOutcome:
        """Stream ``row``'s continuation until its sentence ends (with the look-ahead that decides it), an EOS, or
        its budget; then close the stream (vLLM aborts the request)."""
        offset = max(row.start - 1, 0)
        tracker = SentenceTracker(
            self.tokenizer,
            row.ids[offset:],
            row.start - offset,
            terminators=self.terminators,
            max_sentence_tokens=self.max_sentence_tokens,
        )
        body = {
            "model": self.upstream.model,
            "prompt": list(row.ids),
            "max_tokens": row.budget_left,
            "stream": True,
            "return_token_ids": True,
            "skip_special_tokens": False,
            **self.upstream.sampling,
        }
        tokens: list[int] = []
        try:
            with self._client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise VLLMUpstreamError(f"vLLM answered {response.status_code}: {response.text[:500]}")
                for token in _streamed_token_ids(response.iter_lines()):
                    tokens.append(token)
                    if token in self.eos_token_ids:
                        break
                    cut = tracker.push(token)
                    if cut is not None:
                        return RoundOutcome(tokens, cut=offset + cut)
                    if len(tokens) >= row.budget_left:
                        break
        except VLLMUpstreamError:
            raise
        except Exception as err:  # httpx's transport errors, a broken stream
            raise VLLMUpstreamError(f"the vLLM server at {self.upstream.base_url} failed: {err}") from err
        return RoundOutcome(tokens)


def _streamed_token_ids(lines: Iterable[str]) -> Iterable[int]:
    """The token ids of a ``/v1/completions`` server-sent event stream (``return_token_ids``)."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise VLLMUpstreamError(f"vLLM stream error: {event['error']}")
        for choice in event.get("choices", []):
            yield from choice.get("token_ids") or []


# ---------------------------------------------------------------------------------------------- the entry point
def stream_aligned_completion(
    upstream: VLLMUpstream,
    prompts: Sequence[Sequence[int]],
    *,
    aligner: Any,
    tokenizer: Any,
    max_new_tokens: int,
    aligner_question: str | list[str] | None = None,
    invalid_correction: str = "raise",
    eos_token_ids: Sequence[int] | None = None,
    streamer: Any = None,
    return_dict: bool = False,
) -> Any:
    """Stream-aligned completion of each prompt (token ids) on a vLLM server: the same loop, records, errors and
    streamer events as ``model.generate(..., aligner=...)``; see :mod:`.vllm_engine`.

    Returns ``sequences`` (prompts left-padded with the tokenizer's pad id, then each row's tokens, right-padded) or,
    with ``return_dict``, a :class:`~..outputs.StreamAlignedGenerateOutput` with the trace and stats.
    """
    from ..generation import _check_choice, _prepare_aligner, _prepare_questions
    from ..loop import AlignmentLoop
    from ..outputs import StreamAlignmentError
    from ..plan import GenerationPlan
    from ..streamers import StreamerDriver

    driver = streamer if isinstance(streamer, StreamerDriver) else StreamerDriver(streamer)
    try:
        correct, settings = _prepare_aligner(aligner)
        _check_choice("invalid_correction", invalid_correction, ("raise", "keep_original"))
        rows = [list(map(int, prompt)) for prompt in prompts]
        if not rows or not all(rows):
            raise ValueError("stream_aligned_completion needs at least one non-empty prompt")
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        eos = list(eos_token_ids) if eos_token_ids is not None else [tokenizer.eos_token_id]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        width = max(len(r) for r in rows)
        prompt_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        if len(rows) > 1 and driver.streamer is not None and not driver.per_row:
            raise ValueError("a batch needs a per_row streamer (StreamAlignerIteratorStreamer(tok, per_row=True))")

        def factory(plan_rows: list[Any], stats: Any) -> VLLMEngine:
            return VLLMEngine(upstream, plan_rows, tokenizer=tokenizer, stats=stats, terminators=settings.terminators,
                              max_sentence_tokens=settings.max_sentence_tokens, eos_token_ids=eos)  # fmt: skip

        plan = GenerationPlan(
            tokenizer=tokenizer,
            correct=correct,
            settings=settings,
            prompt_ids=prompt_ids,
            rows=rows,
            questions=_prepare_questions(aligner_question, tokenizer, rows, len(rows), 1),
            max_new_tokens=max_new_tokens,
            eos_token_ids=frozenset(eos),
            pad_token_id=int(pad),
            invalid_correction=invalid_correction,
            completed_rows="hold",
            streamer=driver,
            engine_factory=factory,
            return_dict=return_dict,
        )
        loop = AlignmentLoop(plan)
        try:
            loop.run()
        except VLLMUpstreamError as err:  # the upstream failed: a clear error with every row's output so far
            raise loop.fail(str(err), StreamAlignmentError, None, None) from err
    except BaseException as error:
        driver.abort(error)
        raise
    return loop.output(None)
