from transformers import LogitsProcessorList, StoppingCriteriaList

from transformers_stream_aligner import (
    HoldCompletedRowsLogitsProcessor,
    SentenceBoundaryCriteria,
)
from transformers_stream_aligner.runtime.boundary.tracker import decode_span, find_token_boundary

from ..helpers import prompt_ids


def test_criteria_stops_plain_generate_after_one_sentence_plus_lookahead(tiny_llama):
    model, tok = tiny_llama
    ids = prompt_ids(tok)
    n = ids.shape[1]
    crit = SentenceBoundaryCriteria(tok, [n], eos_token_id=tok.eos_token_id)
    out = model.generate(ids, max_new_tokens=80, do_sample=False, stopping_criteria=StoppingCriteriaList([crit]))
    cut = crit.cuts[0]
    assert crit.done == [True] and cut is not None and n < cut <= out.shape[1]
    seq = out[0].tolist()
    sentence = decode_span(tok, seq, n, cut)
    assert sentence.rstrip()[-1] in ".!?" or "\n" in decode_span(tok, seq, n, out.shape[1])
    # one token of look-ahead decided it: without the last token, no boundary is certain yet
    assert find_token_boundary(tok, seq, n, len(seq) - 1, final=False) is None
    assert find_token_boundary(tok, seq, n, len(seq), final=False) == cut


def _done_length(tok, seq, n):
    """Length of the row when its sentence became certain (sentence + look-ahead)."""
    for length in range(n + 1, len(seq) + 1):
        if find_token_boundary(tok, seq, n, length, final=False) is not None:
            return length
    return None


def test_criteria_per_row_in_a_batch_and_hold_processor(tiny_llama):
    model, tok = tiny_llama
    tok.padding_side = "left"
    batch = tok(["The cat is", "My friend looks very"], return_tensors="pt", padding=True)
    n = batch.input_ids.shape[1]

    def run(with_hold):
        crit = SentenceBoundaryCriteria(tok, [n, n])
        processors = [HoldCompletedRowsLogitsProcessor(crit, tok.pad_token_id)] if with_hold else []
        # eos_token_id=None: no EOS criterion, so transformers itself would not pad finished rows
        out = model.generate(**batch, max_new_tokens=80, do_sample=False, eos_token_id=None,
                             stopping_criteria=StoppingCriteriaList([crit]),
                             logits_processor=LogitsProcessorList(processors))
        return crit, out

    crit, out = run(with_hold=True)
    assert crit.done == [True, True]
    lengths = [_done_length(tok, out[row].tolist(), n) for row in range(2)]
    assert lengths[0] != lengths[1], "the rows should finish at different steps"
    for row in range(2):
        seq = out[row].tolist()
        assert find_token_boundary(tok, seq, n, lengths[row], final=False) == crit.cuts[row]
        assert seq[lengths[row]:] == [tok.pad_token_id] * (len(seq) - lengths[row])  # held: only padding

    # Without the processor, the row that finished first keeps writing real tokens.
    _, free = run(with_hold=False)
    first = lengths.index(min(lengths))
    assert any(t != tok.pad_token_id for t in free[first, min(lengths):].tolist())


def test_max_sentence_tokens_cap():
    from ..tiny_models import cached_tiny

    _, tok = cached_tiny("llama")
    ids = tok("words without any end " * 10, add_special_tokens=False).input_ids
    assert find_token_boundary(tok, ids, 0, len(ids), final=False) is None
    # cut at the limit once the next token shows that the limit falls between two characters
    assert find_token_boundary(tok, ids, 0, 20, final=False, max_sentence_tokens=20) is None
    assert find_token_boundary(tok, ids, 0, 21, final=False, max_sentence_tokens=20) == 20
