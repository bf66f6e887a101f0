"""What the aligner copies: the draft of a correction that copies its sentence (prompt lookup anchored to the
sentence, :func:`propose_copy_draft`), the copy token at each step (:class:`CopyTracker`) and the copy bias inside the
stock ``generate`` (:class:`CopyBiasLogitsProcessor`). The decoder (:mod:`.decoding`) feeds the drafts; training
(:mod:`..training.data`) builds the same copy source.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

__all__ = ["CopyBiasLogitsProcessor", "CopyTracker", "propose_copy_draft"]


def propose_copy_draft(source: Sequence[int], output: Sequence[int], k: int, *, max_ngram: int = 3, hint: int = 0) -> tuple[list[int], int]:
    """The next ``k`` tokens of ``source`` after the longest n-gram (``n <= max_ngram``) that ``output``
    ends with; returns ``(draft, end)`` where ``end`` is the index in ``source`` the draft starts at.

    With an empty ``output`` the draft is the start of ``source``. When the n-gram occurs more than once,
    the first occurrence ending at or after ``hint`` (where the previous draft stopped) wins, so a
    repeated word does not send the draft back. No match gives an empty draft.

    Example:

        >>> propose_copy_draft([1, 2, 3, 4, 2, 3, 5], [9, 2, 3], 2, hint=4)
        ([5], 6)
        >>> propose_copy_draft([1, 2, 3, 4], [], 3)
        ([1, 2, 3], 0)
    """
    if k <= 0:
        return [], hint
    if not output:
        return list(source[:k]), 0
    n_src = len(source)
    for n in range(min(max_ngram, len(output)), 0, -1):
        tail = list(output[-n:])
        ends = [i + n for i in range(n_src - n) if list(source[i : i + n]) == tail]
        if not ends:
            continue
        after = [e for e in ends if e >= hint]
        end = after[0] if after else ends[-1]
        return list(source[end : end + k]), end
    return [], hint


class CopyTracker:
    """The copy token at each step of one correction: the token of ``source`` (the sentence being corrected, plus the
    EOS a copy ends with) that continues copying it after the output so far.

    It is the one-token :func:`propose_copy_draft` of the output, with the hint moved one token on when the output
    took the copy token and left where it was otherwise, so a repeated word does not send it back. ``None`` when the
    output's tail is nowhere in ``source``. :meth:`push` **mutates** the tracker (its output); :meth:`peek` does not.

    >>> tracker = CopyTracker([7, 8, 7, 9, 0])
    >>> tracker.peek([7, 8, 7])  # before each token of a path, and after it
    [7, 8, 7, 9]
    >>> tracker.push(7); tracker.push(5); tracker.next_token()  # 5 is not in the source
    >>> tracker.push(9); tracker.next_token()
    0
    """

    def __init__(self, source: Sequence[int], *, max_ngram: int = 3) -> None:
        self.source = list(source)
        self.max_ngram = int(max_ngram)
        self.output: list[int] = []
        self.hint = 0
        # The last peeked path from the current state and the (copy, end) before each of its tokens and after it;
        # pushing the path's tokens walks along it, so no step is computed twice (``_steps[0]``: the current state).
        self._path: list[int] = []
        self._steps: list[tuple[int | None, int]] = []

    def _step(self, output: list[int], hint: int) -> tuple[int | None, int]:
        draft, end = propose_copy_draft(self.source, output, 1, max_ngram=self.max_ngram, hint=hint)
        return (draft[0] if draft else None), end

    def _here(self) -> tuple[int | None, int]:
        if not self._steps:
            self._path, self._steps = [], [self._step(self.output, self.hint)]
        return self._steps[0]

    def next_token(self) -> int | None:
        """The copy token after the output so far (``None``: no copy to continue)."""
        return self._here()[0]

    def push(self, token: int) -> None:
        """Append ``token`` to the output (mutates the tracker)."""
        copy, end = self._here()
        token = int(token)
        self.hint = end + 1 if copy is not None and token == copy else end
        self.output.append(token)
        if self._path and self._path[0] == token:
            self._path, self._steps = self._path[1:], self._steps[1:]
        else:
            self._path, self._steps = [], []

    def peek(self, path: Sequence[int]) -> list[int | None]:
        """The copy token before each token of ``path`` and after the last (``len(path) + 1`` entries), as if
        ``path`` were pushed; the output is not changed (the steps are kept for the pushes that follow the path)."""
        steps = [self._here()]
        output, hint = list(self.output), self.hint
        for token in path:
            copy, end = steps[-1]
            hint = end + 1 if copy is not None and token == copy else end
            output.append(int(token))
            steps.append(self._step(output, hint))
        self._path, self._steps = [int(t) for t in path], steps
        return [copy for copy, _ in steps]


class CopyBiasLogitsProcessor(LogitsProcessor):
    """Add ``bias`` to the logit of each row's copy token (:class:`CopyTracker`) inside the stock ``generate``: the
    same rule :class:`AlignerDecoder` applies, so the aligner's corrections do not depend on which one decodes.

    Args:
        sources: one token list per row (the sentence to correct, plus the EOS a copy ends with).
        bias: added to the copy token's logit (``StreamAlignerConfig.copy_bias``).
        prompt_length: columns of ``input_ids`` before the first generated token (the padded prompt).

    A processor serves one ``generate`` call: it keeps one tracker per row. It **mutates** ``scores`` in place.

    >>> proc = CopyBiasLogitsProcessor([[3, 1]], 5.0, prompt_length=2)
    >>> proc(torch.tensor([[9, 9]]), torch.zeros(1, 4)).tolist()
    [[0.0, 0.0, 0.0, 5.0]]
    >>> proc(torch.tensor([[9, 9, 3]]), torch.zeros(1, 4)).tolist()
    [[0.0, 5.0, 0.0, 0.0]]
    """

    def __init__(self, sources: Sequence[Sequence[int]], bias: float, *, prompt_length: int, max_ngram: int = 3) -> None:
        self.trackers = [CopyTracker(s, max_ngram=max_ngram) for s in sources]
        self.bias = float(bias)
        self.prompt_length = int(prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, tracker in enumerate(self.trackers):
            for token in input_ids[row, self.prompt_length + len(tracker.output) :].tolist():
                tracker.push(token)
            copy = tracker.next_token()
            if copy is not None:
                scores[row, copy] += self.bias
        return scores
