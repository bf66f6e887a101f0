"""Fast exact greedy decoding for the aligner: copy-speculative drafts and a KV cache kept across sentences.

Stream alignment asks the aligner once per sentence, with prompts that grow by one sentence each time,
and the correction is usually the sentence itself. :class:`AlignerDecoder` turns both facts into speed
without changing a token: its output is, token for token, what ``generate(do_sample=False)`` gives.

* **KV reuse across calls.** The aligner's KV cache is kept between calls. Each new prompt is matched
  to the cached row that shares the longest prefix of token ids with it; that row is cut back to the
  common prefix and only the rest of the prompt is fed. Consecutive prompts share the system text, the
  question and the answer prefix, so a sentence costs its own tokens, not the whole answer again.
* **Copy speculation.** The sentence to correct is the draft (prompt lookup, as transformers'
  ``prompt_lookup_num_tokens`` does over the whole prompt, but anchored to the sentence): the tokens in
  it that follow the longest n-gram the output ends with are fed together with the output's newest
  token, and kept as far as they equal the greedy choice; the first token that differs is the greedy
  choice itself. The first draft rides along with the prompt, so a sentence the aligner copies costs
  **one forward**.

Rows of a batch share one cache. A row is cut back by masking its columns out (``attention_mask`` 0);
positions come from each row's own token count, so masked holes change nothing. Columns that no row
uses any more are cropped, and a cache with too many holes is compacted by a gather.

**Copy bias** (``StreamAlignerConfig.copy_bias``): the logit of the *copy token*, the token of the sentence that
continues copying it (:class:`~.copy_draft.CopyTracker`), is raised by a constant at every step, so the aligner changes
a sentence only where it is confident. The decoder adds it to each verified position;
:class:`~.copy_draft.CopyBiasLogitsProcessor` adds the same bias to the same token inside the stock ``generate``, so
both still give the same tokens. The drafts and the copy token: :mod:`.copy_draft`.

Only models whose cache is made of plain ``DynamicLayer`` s (no sliding window, no recurrent state) and
whose forward takes ``position_ids`` are decoded here; :meth:`AlignerDecoder.unsupported_reason` says
why not, and :class:`~transformers_stream_aligner.StreamAligner` then uses the stock ``generate``.

Example (a plain copy of the source costs one forward):

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from transformers_stream_aligner.aligners.decoding import AlignerDecoder
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)).eval()
    >>> decoder = AlignerDecoder(model, eos_token_ids=[0], pad_token_id=0)
    >>> greedy = decoder.generate([[5, 6, 7]], sources=[[]], max_new_tokens=4)[0]  # no draft
    >>> decoder.generate([[5, 6, 7]], sources=[greedy], max_new_tokens=4)[0] == greedy
    True
    >>> decoder.stats.forwards_last_call  # the whole output checked in one forward (the prompt was cached)
    1
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..compat import forward_cache_key
from ..runtime.cache import MaskedKVLayout, probe_masked_layout
from ..tokens import longest_common_prefix, token_id_list
from .config import StreamAlignerConfig
from .copy_draft import CopyTracker, propose_copy_draft

__all__ = ["AlignerDecoder", "AlignerDecodingStats"]

# GenerationConfig fields that add a logits processor (or change greedy search) when set away from
# their defaults: the decoder only runs when plain greedy argmax is what ``generate`` would do.
_PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
}


@dataclass
class AlignerDecodingStats:
    """Work counters of an :class:`AlignerDecoder` (cumulative; ``*_last_call`` for the newest call).

    Attributes:
        calls: ``generate`` calls.
        forwards: model forwards.
        fed_tokens: token positions fed (real tokens, prompt and output, drafts included).
        reused_tokens: prompt tokens found in the cache and not fed again.
        prompt_tokens: prompt tokens in all (``reused_tokens`` + the part fed).
        draft_tokens: draft tokens fed; ``accepted_tokens``: of those, the ones greedy decoding agreed with.
        output_tokens: tokens produced (EOS included).
        compactions: times the cache was compacted (holes squeezed out).
        row_drops: times the rows still decoding went on in a batch of their own (``drop_finished_rows``).
        stopped_rows: outputs a stop rule ended before their EOS (``generate(stop_rules=...)``).
        forwards_last_call, fed_tokens_last_call: the same, for the newest call only.
    """

    calls: int = 0
    forwards: int = 0
    fed_tokens: int = 0
    reused_tokens: int = 0
    prompt_tokens: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    output_tokens: int = 0
    compactions: int = 0
    row_drops: int = 0
    stopped_rows: int = 0
    forwards_last_call: int = 0
    fed_tokens_last_call: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlignerDecoder:
    """Greedy decoding of a causal LM with copy drafts and a KV cache that lives across calls.

    Args:
        model: the aligner's causal LM (see :meth:`unsupported_reason`).
        eos_token_ids: tokens that end an output (kept in it, as ``generate`` keeps them).
        pad_token_id: filler for masked columns.
        num_draft_tokens: most draft tokens fed per forward (0: no speculation).
        max_ngram: longest output tail looked up in the source.
        reuse_cache: keep the KV cache between calls (off: every call starts from an empty cache).
        compact_slack: the cache is compacted when it has more than ``compact_slack`` masked columns
            beyond its longest row (and more than that row's length).
        drop_finished_rows: once at most half of the rows still decode, they go on in a batch of their own (a copy
            of their cache rows, :meth:`MaskedKVLayout.subset`), so that corrections that ended early stop riding in
            every forward of a long one; the shared cache keeps every row for the next call.
        copy_bias: added to the copy token's logit at every step (``StreamAlignerConfig.copy_bias``; the tokens are
            then those of ``generate`` with :class:`CopyBiasLogitsProcessor`).

    The rows share one cache described by a :class:`~.cache.MaskedKVLayout` (the layout the upstream's batch
    uses too). The decoder owns its cache: :meth:`generate` **mutates** it (cut back, filled, compacted);
    :meth:`reset` drops it.
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: Iterable[int],
        pad_token_id: int,
        num_draft_tokens: int = StreamAlignerConfig.copy_draft_tokens,
        max_ngram: int = 3,
        reuse_cache: bool = True,
        compact_slack: int = 64,
        drop_finished_rows: bool = True,
        copy_bias: float = 0.0,
    ) -> None:
        reason = self.unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"AlignerDecoder cannot decode this model: {reason}")
        if num_draft_tokens < 0:
            raise ValueError(f"num_draft_tokens must be >= 0, got {num_draft_tokens}")
        self.model = model
        self.eos = frozenset(token_id_list(list(eos_token_ids)))
        self.pad = int(pad_token_id)
        self.num_draft_tokens = int(num_draft_tokens)
        self.max_ngram = int(max_ngram)
        self.reuse_cache = reuse_cache
        self.compact_slack = int(compact_slack)
        self.drop_finished_rows = drop_finished_rows
        self.copy_bias = float(copy_bias)
        self.stats = AlignerDecodingStats()
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.reset()

    # ------------------------------------------------------------------ support
    @staticmethod
    def unsupported_reason(model: Any) -> str | None:
        """Why ``model`` cannot be decoded here (``None`` when it can), decided by what it does rather than by the
        names its ``forward`` lists (a release may hide them behind ``**kwargs``): its default cache must hold only
        full-attention layers, and a probe of two forwards of three tokens (no gradients; the weights are untouched)
        must show that the forward takes the cache, the attention mask and the position ids this decoder passes: a
        token after a masked hole gets the logits it gets without the hole, and the cache holds every column."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        config = getattr(model, "config", None)
        if config is None or getattr(config, "is_encoder_decoder", False) or not callable(getattr(model, "forward", None)):
            return "it is not a decoder-only transformers model"
        try:
            layers = DynamicCache(config=config).layers
        except Exception as err:  # noqa: BLE001 - any model the cache cannot describe is unsupported
            return f"its cache cannot be built ({type(err).__name__})"
        if any(type(layer) is not DynamicLayer for layer in layers):
            return "its cache has sliding-window or non-attention layers, which column masks would shift"
        return probe_masked_layout(model)

    @staticmethod
    def greedy_is_argmax(generation_config: Any) -> bool:
        """Whether ``generate(do_sample=False)`` with ``generation_config`` is plain argmax (no logits
        processor that would change the choice)."""
        if generation_config is None:
            return True
        for name, defaults in _PROCESSOR_FIELDS.items():
            value = getattr(generation_config, name, None)
            if value not in defaults:
                return False
        return True

    # ------------------------------------------------------------------ cache bookkeeping
    def reset(self) -> None:
        """Drop the cache (the next call starts from nothing)."""
        self.layout: MaskedKVLayout | None = None

    @property
    def width(self) -> int:
        """Columns the cache holds (live tokens of the longest row plus masked holes)."""
        return 0 if self.layout is None else self.layout.width

    def _maybe_compact(self) -> None:
        """Squeeze out masked columns when they outweigh the live ones (a gather; exact)."""
        longest = max((len(c) for c in self.layout.cols), default=0)
        if self.layout.holes() <= max(self.compact_slack, longest):
            return
        self.layout.compact()
        self.stats.compactions += 1

    def _forward(self, layout: MaskedKVLayout, blocks: list[list[int]], keep: int) -> torch.Tensor:
        """Feed each row of ``layout`` its block (right-aligned into one block of columns); return the logits of the
        last ``keep`` columns, ``(batch, keep, vocab)``. Mutates ``layout`` and its cache."""
        block = layout.append(blocks, filler=self.pad)
        kwargs: dict[str, Any] = {}
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        device = self.model.device
        kwargs[forward_cache_key(self.model)] = layout.cache
        out = self.model(
            input_ids=block.ids.to(device),
            attention_mask=layout.mask.to(device),
            position_ids=block.positions.to(device),
            use_cache=True,
            **kwargs,
        )
        self.stats.forwards += 1
        self.stats.forwards_last_call += 1
        fed = sum(len(b) for b in blocks)
        self.stats.fed_tokens += fed
        self.stats.fed_tokens_last_call += fed
        return out.logits[:, -keep:, :]

    # ------------------------------------------------------------------ decoding
    def _take_rows(self, prompts: list[list[int]]) -> None:
        """Lay the cached rows out for ``prompts``: each prompt gets the cached row sharing the longest prefix
        with it (a new, empty row when none is left, or always without KV reuse)."""
        from transformers import DynamicCache

        if not self.reuse_cache or self.layout is None:
            self.layout = MaskedKVLayout(len(prompts), device=self.model.device, cache=DynamicCache(config=self.model.config))
            return
        free = list(range(self.layout.batch_size))
        order: list[int] = []
        for prompt in prompts:
            if not free:
                order.append(-1)
                continue
            best = max(free, key=lambda r: longest_common_prefix(self.layout.tokens[r], prompt))
            free.remove(best)
            order.append(best)
        self.layout.select(order)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], *, sources: Sequence[Sequence[int]], max_new_tokens: int,
                 stop_rules: Sequence[Callable[[list[int]], bool] | None] | None = None) -> list[list[int]]:  # fmt: skip
        """Greedy outputs for ``prompts`` (one list of new token ids per prompt, ending with an EOS
        unless ``max_new_tokens`` came first), drafting from ``sources`` (one token list per prompt).

        Exactly the tokens ``model.generate(prompt, do_sample=False, max_new_tokens=...)`` returns for
        each prompt alone (up to floating-point ties). ``stop_rules`` (one per prompt, or ``None``): after each
        forward, a row whose rule says ``True`` for its output so far stops there, without an EOS (the edit rule,
        :mod:`.aligner_edits`). Mutates the decoder's cache; an exception (also ``KeyboardInterrupt``) drops it,
        so the next call starts afresh with the same result.
        """
        prompts = [list(p) for p in prompts]
        if len(sources) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(sources)} sources")
        if stop_rules is not None and len(stop_rules) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(stop_rules)} stop rules")
        if any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        sources = [list(s) for s in sources]
        try:
            return self._generate(prompts, sources, max_new_tokens, list(stop_rules or [None] * len(prompts)))
        except BaseException:  # an interrupted forward leaves the cache out of step with its bookkeeping: drop it
            self.reset()
            raise

    def _generate(self, prompts: list[list[int]], sources: list[list[int]], max_new_tokens: int,
                  stop_rules: list[Callable[[list[int]], bool] | None]) -> list[list[int]]:  # fmt: skip
        self.stats.calls += 1
        self.stats.forwards_last_call = 0
        self.stats.fed_tokens_last_call = 0
        self._take_rows(prompts)
        layout = self.layout
        todo: list[list[int]] = []
        for b, prompt in enumerate(prompts):
            keep = min(longest_common_prefix(layout.tokens[b], prompt), len(prompt) - 1)  # the last token gives the logits
            layout.cut(b, keep)
            todo.append(prompt[keep:])
            self.stats.reused_tokens += keep
            self.stats.prompt_tokens += len(prompt)
        layout.crop_trailing()
        self._maybe_compact()

        outputs: list[list[int]] = [[] for _ in prompts]
        trackers = [CopyTracker(s, max_ngram=self.max_ngram) for s in sources] if self.copy_bias else None
        hints = [0] * len(prompts)
        done = [False] * len(prompts)
        # ``active`` is the layout the forwards use: the shared one, or (once most rows are done) a copy of the rows
        # still decoding; its row i is prompt ``rows[i]``. The shared layout keeps every row for the next call.
        active, rows = layout, list(range(len(prompts)))
        while not all(done):
            live = [i for i, b in enumerate(rows) if not done[b]]
            if self.drop_finished_rows and len(live) <= len(rows) // 2:
                active, rows = active.subset(live), [rows[i] for i in live]
                self.stats.row_drops += 1
            drafts: list[list[int]] = []
            for b in rows:
                room = max_new_tokens - len(outputs[b]) - 1
                if done[b] or room <= 0:
                    drafts.append([])
                    continue
                draft, hints[b] = propose_copy_draft(
                    sources[b], outputs[b], min(self.num_draft_tokens, room), max_ngram=self.max_ngram, hint=hints[b]
                )
                drafts.append(draft)
            blocks = [[] if done[b] else todo[b] + drafts[i] for i, b in enumerate(rows)]
            keep = max(len(drafts[i]) + 1 for i, b in enumerate(rows) if not done[b])
            logits = self._forward(active, blocks, keep)
            for i, b in enumerate(rows):
                if done[b]:
                    continue
                draft = drafts[i]
                scores = logits[i, keep - len(draft) - 1 :]
                if trackers is not None:  # the copy bias on float32 scores, as generate's processors see them
                    scores = scores.to(torch.float32, copy=True)
                    for j, copy in enumerate(trackers[b].peek(draft)):
                        if copy is not None:
                            scores[j, copy] += self.copy_bias
                greedy = scores.argmax(-1).tolist()
                accepted = 0
                while accepted < len(draft) and greedy[accepted] == draft[accepted]:
                    accepted += 1
                active.cut(i, active.placed(i) - (len(draft) - accepted))
                hints[b] += accepted
                self.stats.draft_tokens += len(draft)
                self.stats.accepted_tokens += accepted
                new = draft[:accepted] + [greedy[accepted]]
                for k, token in enumerate(new):
                    if token in self.eos:
                        new = new[: k + 1]
                        done[b] = True
                        break
                new = new[: max_new_tokens - len(outputs[b])]
                outputs[b].extend(new)
                if trackers is not None:
                    for token in new:
                        trackers[b].push(token)
                if len(outputs[b]) >= max_new_tokens:
                    done[b] = True
                elif not done[b] and stop_rules[b] is not None and stop_rules[b](outputs[b]):
                    done[b] = True
                    self.stats.stopped_rows += 1
                todo[b] = [outputs[b][-1]]
            active.crop_trailing()
        self.stats.output_tokens += sum(len(o) for o in outputs)
        return outputs
