"""Incremental boundary detection: the same cuts as ``find_token_boundary``, with work per token that does
not grow with the sentence."""

import random

import pytest
import torch

from transformers_stream_aligner import SentenceBoundaryCriteria
from transformers_stream_aligner.runtime.boundary import tracker as boundary_module
from transformers_stream_aligner.runtime.boundary.splitter import find_sentence_end, scan_sentence_end
from transformers_stream_aligner.runtime.boundary.tracker import SentenceTracker, find_token_boundary

TRICKY = [
    "It is 3.5 m long. Next one.",
    "Dr. Smith is here. e.g. the cat. Approx. three. Done!",
    "Dr. \nNew line here.",
    "Wait... and then. OK?! Yes.",
    'He said "no." Then he left. (Really.) Fine',
    "1. First item.\n2. Second item\n\n- a dash\nend",
    "file.txt is here. Ok",
    "你好。世界！很好？ Next.",
    "Great 😀. Next 🎉! Done.",
    "17*23 = 381. So 45 + 19 = 64. Right",
    "Mr.Smith?No. Yes… maybe. Hmm",
    "Line one\r\nLine two.  Two spaces.\tTab.",
]


def _texts(n=40, seed=0):
    rng = random.Random(seed)
    pieces = ["The cat is good", "3.5", "e.g. this", "Dr. Who", "17*23 = 381", "“quoted.”", "(aside.)", "...", "!", "?",
              ". ", "\n", "\n\n1. ", " and", "你好。", "😀", "  ", "x.y", "Mr.", " ok"]  # fmt: skip
    return TRICKY + ["".join(rng.choice(pieces) for _ in range(rng.randint(3, 25))) for _ in range(n)]


def test_scan_resume_gives_find_sentence_end_on_every_prefix():
    for text in _texts():
        for start in (0, 1):
            resume = 0
            for n in range(start, len(text) + 1):
                expected = find_sentence_end(text[:n], start)
                got, new_resume = scan_sentence_end(text[:n], start, resume)
                assert got == expected, (text, n)
                if got is None:
                    resume = new_resume
                else:
                    break


def _metaspace_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..tiny_models import corpus

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"])
    tok.train_from_iterator([corpus(1) + " ".join(TRICKY)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def _check_tracker_matches(tok, texts, max_sentence_tokens=12):
    """Walk each text token by token as the criterion does (one context token, look-ahead carried into the
    next sentence) and compare every answer of the tracker with find_token_boundary's."""
    checked = 0
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        start, have = 0, 1
        tracker = SentenceTracker(tok, ids[:have], 0, max_sentence_tokens=max_sentence_tokens)
        cut = tracker.push()
        while True:
            expected = find_token_boundary(tok, ids[:have], start, have, final=False, max_sentence_tokens=max_sentence_tokens)
            lo = max(start - 1, 0)
            assert (cut + lo if cut is not None else None) == expected, (text, start, have)
            checked += 1
            if expected is not None:
                start = expected
                lo = max(start - 1, 0)
                tracker = SentenceTracker(tok, ids[lo:have], start - lo, max_sentence_tokens=max_sentence_tokens)
                cut = tracker.push()
                continue
            if have == len(ids):
                break
            have += 1
            cut = tracker.push(ids[have - 1])
    return checked


def test_tracker_matches_find_token_boundary_byte_level(tiny_llama):
    _, tok = tiny_llama
    assert _check_tracker_matches(tok, _texts()) > 500


def test_tracker_matches_find_token_boundary_metaspace():
    assert _check_tracker_matches(_metaspace_tokenizer(), _texts()) > 500


@pytest.mark.smollm2
def test_tracker_matches_find_token_boundary_smollm2(smollm2):
    _, tok = smollm2
    assert _check_tracker_matches(tok, _texts(), max_sentence_tokens=40) > 500


def test_work_per_token_does_not_grow_with_the_sentence(tiny_llama, monkeypatch):
    """A 400-token sentence that never ends: no full decode at all, and each character is scanned about once
    (the old criterion decoded and scanned the whole sentence at every token: ~n²/2)."""
    _, tok = tiny_llama
    ids = tok(" and the cat" * 150, add_special_tokens=False).input_ids[:400]
    decoded = []
    real_decode = tok.decode
    monkeypatch.setattr(tok, "decode", lambda t, **kw: decoded.append(len(t)) or real_decode(t, **kw))
    scanned = []
    real_scan = boundary_module.scan_sentence_end

    def counting_scan(text, start=0, resume=0, **kw):
        scanned.append(len(text) - max(resume, start))
        return real_scan(text, start, resume, **kw)

    monkeypatch.setattr(boundary_module, "scan_sentence_end", counting_scan)
    criteria = SentenceBoundaryCriteria(tok, [1], max_sentence_tokens=None)
    seq = torch.tensor([ids[:2]])
    for t in ids[2:]:
        seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
        assert not criteria(seq, None).all()
    text_len = len(real_decode(ids[1:]))
    assert sum(decoded) == 0
    assert sum(scanned) <= text_len + 2 * len(ids)
    # and it still finds the end when it comes
    end = tok(". Then", add_special_tokens=False).input_ids
    for t in end:
        seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
        criteria(seq, None)
    assert criteria.cuts[0] == find_token_boundary(tok, seq[0].tolist(), 1, seq.shape[1], final=False)
