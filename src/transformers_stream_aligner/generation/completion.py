"""Stream-aligned completion with the upstream on a vLLM server: the entry point of the vLLM engine
(:mod:`..runtime.engines.vllm_engine`), as :mod:`.generate` is the transformers engine's. Both build the same
:class:`~..runtime.plan.GenerationPlan` with the same ``_prepare_*`` steps and run the same loop.

Example:

    >>> from transformers_stream_aligner.generation.completion import stream_aligned_completion
    >>> from transformers_stream_aligner.runtime.engines.vllm_engine import VLLMUpstream
    >>> upstream = VLLMUpstream("http://127.0.0.1:8000", model="smol")  # doctest: +SKIP
    >>> out = stream_aligned_completion(upstream, [prompt_ids], aligner=fn, tokenizer=tok, max_new_tokens=100)  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from ..runtime.engines.base import run_cancellable
from ..runtime.engines.vllm_engine import VLLMEngine, VLLMUpstream
from ..runtime.loop import AlignmentLoop
from ..runtime.plan import GenerationPlan
from ..runtime.streamers import StreamerDriver
from .steps import _check_choice, _prepare_aligner, _prepare_questions

__all__ = ["astream_aligned_completion", "stream_aligned_completion"]


def stream_aligned_completion(
    upstream: VLLMUpstream,
    prompts: Sequence[Sequence[int]],
    *,
    aligner: Any,
    tokenizer: Any,
    max_new_tokens: int,
    aligner_question: str | list[str] | None = None,
    max_sentence_tokens: int | None = None,
    max_correction_tokens: int | None = None,
    terminators: str | None = None,
    invalid_correction: str = "raise",
    eos_token_ids: Sequence[int] | None = None,
    streamer: Any = None,
    return_dict: bool = False,
    overlap: bool = False,
    cancel: threading.Event | None = None,
    sampling: dict[str, Any] | None = None,
) -> Any:
    """Stream-aligned completion of each prompt (token ids) on a vLLM server: the same loop, records, errors and
    streamer events as ``model.generate(..., aligner=...)``, with the upstream on a vLLM server
    (:mod:`..runtime.engines.vllm_engine`).

    Args:
        aligner_question, max_sentence_tokens, max_correction_tokens, terminators, invalid_correction: as in
            :func:`~.generate.stream_aligned_generate`.
        overlap: let each row's request keep streaming while the aligner corrects its sentence (kept if the
            aligner leaves the sentence unchanged, dropped otherwise; the tokens are the same either way).
        sampling: ``/v1/completions`` sampling fields for this call instead of ``upstream.sampling`` (a server
            serves each request's own settings through one ``upstream`` and its one HTTP client).
        cancel: an event; once set, every request of the call ends at its next token and the call raises
            :class:`~..outputs.StreamAlignmentCancelled` with the output so far.

    Returns ``sequences`` (prompts left-padded with the tokenizer's pad id, then each row's tokens, right-padded) or,
    with ``return_dict``, a :class:`~..outputs.StreamAlignedGenerateOutput` with the trace and stats. Upstream
    failures (server down, an error answer, a broken stream, a timeout) raise a
    :class:`~..outputs.StreamAlignmentError` that names the server and carries every row's output so far.
    """
    driver = streamer if isinstance(streamer, StreamerDriver) else StreamerDriver(streamer)
    try:
        correct, settings = _prepare_aligner(
            aligner, max_sentence_tokens=max_sentence_tokens, max_correction_tokens=max_correction_tokens,
            terminators=terminators,
        )  # fmt: skip
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
                              max_sentence_tokens=settings.max_sentence_tokens, eos_token_ids=eos, overlap=overlap,
                              cancel=cancel, sampling=sampling)  # fmt: skip

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
        loop.run()  # upstream failures and cancellation come out as StreamAlignmentError with the output so far
    except BaseException as error:
        driver.abort(error)
        raise
    return loop.output(None)


async def astream_aligned_completion(upstream: VLLMUpstream, prompts: Sequence[Sequence[int]], **kwargs: Any) -> Any:
    """:func:`stream_aligned_completion` for asyncio: the call's sentence loop runs on a thread of its own, so many
    calls run at once (vLLM batches their requests; a shared :class:`~..aligners.batching.BatchingAligner` batches
    their aligner calls). Cancelling the awaiting task ends the call's requests at their next token.

    Example:

        >>> async def answer_all(upstream, prompts, aligner, tok):  # doctest: +SKIP
        ...     return await asyncio.gather(*(astream_aligned_completion(upstream, [p], aligner=aligner,
        ...                                   tokenizer=tok, max_new_tokens=100) for p in prompts))
    """
    if "cancel" in kwargs:
        raise TypeError("astream_aligned_completion is cancelled by cancelling its task, not with cancel=")
    return await run_cancellable(lambda cancel: stream_aligned_completion(upstream, prompts, cancel=cancel, **kwargs))
