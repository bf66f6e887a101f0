"""transformers' own streamer tests (``tests/generation/test_streamers.py`` of transformers 5.x), adapted.

Each stock scenario runs with our streamers in place of ``TextStreamer`` / ``TextIteratorStreamer`` /
``AsyncTextIteratorStreamer``, on the local tiny model instead of Hub checkpoints: without an aligner (the stock
``generate`` drives our class) and with an identity aligner (stream-aligned ``generate`` drives it). A drop-in
must print, yield and time out exactly as the stock class does with the same arguments.
"""

import asyncio
import io
from contextlib import redirect_stdout
from queue import Empty
from threading import Thread

import pytest
import torch
from transformers import AsyncTextIteratorStreamer, TextIteratorStreamer, TextStreamer

from transformers_stream_aligner import (
    StreamAlignerAsyncIteratorStreamer,
    StreamAlignerIteratorStreamer,
    StreamAlignerStreamer,
    enable_stream_alignment,
)


def identity(question, prefix, last):
    return last


ALIGNERS = [None, identity]
IDS = ["without-aligner", "identity-aligner"]


@pytest.fixture
def tiny(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    return model, tok


def _prompt(model, seed=0):
    # the stock tests' ids_tensor((1, 5), vocab_size): random ids, EOS disabled (eos_token_id=-1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (1, 5), generator=generator)


def _generate(model, ids, aligner, **kwargs):
    kwargs = {"max_new_tokens": 10, "do_sample": False, "eos_token_id": -1, **kwargs}
    if aligner is not None:
        kwargs["aligner"] = aligner
    return model.generate(ids, **kwargs)


def _printed(model, ids, streamer, aligner):
    buf = io.StringIO()
    with redirect_stdout(buf):
        _generate(model, ids, aligner, streamer=streamer)
    return buf.getvalue()


@pytest.mark.parametrize("aligner", ALIGNERS, ids=IDS)
def test_text_streamer_matches_non_streaming(tiny, aligner):
    model, tok = tiny
    ids = _prompt(model)
    greedy_text = tok.decode(_generate(model, ids, None)[0])
    printed = _printed(model, ids, StreamAlignerStreamer(tok), aligner)
    assert printed[:-1] == greedy_text  # all but the final "\n"
    assert printed == _printed(model, ids, TextStreamer(tok), None)  # the stock class, byte for byte


@pytest.mark.parametrize("aligner", ALIGNERS, ids=IDS)
def test_iterator_streamer_matches_non_streaming(tiny, aligner):
    model, tok = tiny
    ids = _prompt(model, seed=1)
    greedy_text = tok.decode(_generate(model, ids, None)[0])
    streamer = StreamAlignerIteratorStreamer(tok)
    thread = Thread(target=_generate, args=(model, ids, aligner), kwargs={"streamer": streamer})
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == greedy_text


@pytest.mark.parametrize("aligner", ALIGNERS, ids=IDS)
def test_text_streamer_skip_prompt(tiny, aligner):
    model, tok = tiny
    ids = _prompt(model, seed=2)
    new_text = tok.decode(_generate(model, ids, None)[0, ids.shape[1] :])
    printed = _printed(model, ids, StreamAlignerStreamer(tok, skip_prompt=True), aligner)
    assert printed[:-1] == new_text


@pytest.mark.parametrize("aligner", ALIGNERS, ids=IDS)
def test_text_streamer_decode_kwargs(tiny, aligner):
    # A prompt of special tokens is not printed with skip_special_tokens=True: one new token, re-tokenized, is one id.
    model, tok = tiny
    special = tok.convert_tokens_to_ids("<|im_start|>")
    ids = torch.full((1, 5), special, dtype=torch.long)
    buf = io.StringIO()
    with redirect_stdout(buf):
        _generate(model, ids, aligner, streamer=StreamAlignerStreamer(tok, skip_special_tokens=True), max_new_tokens=1)
    printed = buf.getvalue()[:-1]
    assert printed and tok(printed, return_tensors="pt").input_ids.shape == (1, 1)
    stock = io.StringIO()
    with redirect_stdout(stock):
        _generate(model, ids, None, streamer=TextStreamer(tok, skip_special_tokens=True), max_new_tokens=1)
    assert buf.getvalue() == stock.getvalue()


@pytest.mark.parametrize("aligner", ALIGNERS, ids=IDS)
def test_iterator_streamer_timeout(tiny, aligner):
    # Deterministic form of the stock test: nothing is generated within the timeout, so iteration raises Empty;
    # the same streamer then serves the whole answer.
    model, tok = tiny
    ids = _prompt(model, seed=3)
    streamer = StreamAlignerIteratorStreamer(tok, timeout=0.001)
    with pytest.raises(Empty):
        next(streamer)
    streamer.timeout = 60
    thread = Thread(target=_generate, args=(model, ids, aligner), kwargs={"streamer": streamer})
    thread.start()
    assert "".join(streamer) == tok.decode(_generate(model, ids, None)[0])
    thread.join()


@pytest.mark.parametrize("aligner", ALIGNERS, ids=IDS)
def test_async_iterator_streamer_matches_non_streaming(tiny, aligner):
    model, tok = tiny
    ids = _prompt(model, seed=4)
    greedy_text = tok.decode(_generate(model, ids, None)[0])

    async def consume(cls):
        streamer = cls(tok)  # binds the running loop, as the stock class requires
        thread = Thread(target=_generate, args=(model, ids, aligner), kwargs={"streamer": streamer})
        thread.start()
        text = "".join([piece async for piece in streamer])
        thread.join()
        return text

    assert asyncio.run(consume(StreamAlignerAsyncIteratorStreamer)) == greedy_text
    assert asyncio.run(consume(AsyncTextIteratorStreamer)) == greedy_text


@pytest.mark.parametrize("aligner", ALIGNERS, ids=IDS)
def test_async_iterator_streamer_timeout(tiny, aligner):
    model, tok = tiny
    ids = _prompt(model, seed=5)

    async def consume():
        streamer = StreamAlignerAsyncIteratorStreamer(tok, timeout=0.001)
        with pytest.raises(TimeoutError):
            async for _ in streamer:  # nothing is generated within 1 ms
                pass
        streamer.timeout = 60
        thread = Thread(target=_generate, args=(model, ids, aligner), kwargs={"streamer": streamer})
        thread.start()
        text = "".join([piece async for piece in streamer])
        await asyncio.to_thread(thread.join)
        return text

    assert asyncio.run(consume()) == tok.decode(_generate(model, ids, None)[0])


def test_stock_streamers_with_an_identity_aligner_print_what_plain_generate_prints(tiny):
    # The other direction of the drop-in: transformers' own classes under stream-aligned generate.
    model, tok = tiny
    ids = _prompt(model, seed=6)
    assert _printed(model, ids, TextStreamer(tok), identity) == _printed(model, ids, TextStreamer(tok), None)
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    thread = Thread(target=_generate, args=(model, ids, identity), kwargs={"streamer": streamer})
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == tok.decode(_generate(model, ids, None)[0, ids.shape[1] :])
