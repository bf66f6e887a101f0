"""Lifecycle: every streamer ends on every exit path; the iterator streamer hands the error to its consumer."""

import threading

import pytest

from transformers_stream_aligner import (
    AlignerOutputError,
    StreamAlignerIteratorStreamer,
    StreamAlignerStreamer,
    StreamAlignmentError,
    stream_aligned_generate,
)

from ..helpers import prompt_ids


def fails_on_second(question, prefix, last):
    if prefix:
        raise ConnectionError("aligner service unavailable")
    return last


def _serve(model, tok, streamer, aligner, inputs=None, **kwargs):
    """Run generate in a thread as a server does; returns the thread and where its exception goes."""
    outcome = {}

    def target():
        try:
            stream_aligned_generate(
                model, inputs if inputs is not None else prompt_ids(tok), aligner=aligner, tokenizer=tok,
                streamer=streamer, max_new_tokens=40, do_sample=False, **kwargs,
            )  # fmt: skip
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_iterator_consumer_gets_the_text_then_the_error(tiny_llama):
    model, tok = tiny_llama
    streamer = StreamAlignerIteratorStreamer(tok, skip_prompt=True, timeout=60)
    thread, outcome = _serve(model, tok, streamer, fails_on_second)
    pieces = []
    with pytest.raises(StreamAlignmentError, match="aligner service unavailable") as caught:
        for piece in streamer:
            pieces.append(piece)
    thread.join(60)
    assert outcome["error"] is caught.value is streamer.error
    assert len(streamer.records) == 1  # the first sentence was accepted, the second failed
    assert "".join(pieces).strip() == streamer.records[0].corrected_text.strip()
    assert caught.value.partial_texts[0].startswith(streamer.records[0].corrected_text)


def test_iterator_without_raise_errors_just_ends(tiny_llama):
    model, tok = tiny_llama
    streamer = StreamAlignerIteratorStreamer(tok, skip_prompt=True, timeout=60, raise_errors=False)
    thread, outcome = _serve(model, tok, streamer, fails_on_second)
    assert "".join(streamer)  # ends without raising
    thread.join(60)
    assert isinstance(streamer.error, StreamAlignmentError) and outcome["error"] is streamer.error


def test_per_row_consumer_gets_every_rows_final_event_then_the_error(tiny_llama):
    model, tok = tiny_llama
    batch = tok(["The cat is", "A dog"], return_tensors="pt", padding=True)
    streamer = StreamAlignerIteratorStreamer(tok, timeout=60, per_row=True)
    thread, outcome = _serve(model, tok, streamer, fails_on_second, inputs=batch["input_ids"],
                             attention_mask=batch["attention_mask"])  # fmt: skip
    finished = set()
    with pytest.raises(StreamAlignmentError):
        for event in streamer:
            if event.finished:
                assert event.row not in finished
                finished.add(event.row)
    thread.join(60)
    assert finished == {0, 1}


def test_invalid_correction_and_bad_settings_end_the_streamer_too(tiny_llama):
    model, tok = tiny_llama
    streamer = StreamAlignerIteratorStreamer(tok, skip_prompt=True, timeout=60)
    thread, _ = _serve(model, tok, streamer, lambda q, p, last: "")  # empty: an AlignerOutputError
    with pytest.raises(AlignerOutputError):
        list(streamer)
    thread.join(60)
    streamer = StreamAlignerIteratorStreamer(tok, skip_prompt=True, timeout=60)
    thread, outcome = _serve(model, tok, streamer, lambda q, p, last: last, num_beams=2)  # refused before any token
    with pytest.raises(ValueError, match="beam search"):
        list(streamer)
    thread.join(60)
    assert isinstance(outcome["error"], ValueError)


def test_text_streamer_flushes_what_was_accepted_on_failure(tiny_llama, capsys):
    model, tok = tiny_llama
    streamer = StreamAlignerStreamer(tok, skip_prompt=True)
    with pytest.raises(StreamAlignmentError) as caught:
        stream_aligned_generate(model, prompt_ids(tok), aligner=fails_on_second, tokenizer=tok, streamer=streamer,
                                max_new_tokens=40, do_sample=False)  # fmt: skip
    printed = capsys.readouterr().out
    first = caught.value.alignment_trace[0][0].corrected_text
    assert printed == first + "\n"  # the accepted sentence, flushed by end()


def test_async_consumer_gets_the_text_then_the_error(tiny_llama):
    import asyncio

    from transformers_stream_aligner import StreamAlignerAsyncIteratorStreamer

    model, tok = tiny_llama

    async def consume(**options):
        streamer = StreamAlignerAsyncIteratorStreamer(tok, skip_prompt=True, timeout=60, **options)
        thread, outcome = _serve(model, tok, streamer, fails_on_second)
        pieces, error = [], None
        try:
            async for piece in streamer:
                pieces.append(piece)
        except StreamAlignmentError as caught:
            error = caught
        await asyncio.to_thread(thread.join, 60)
        return streamer, outcome, pieces, error

    streamer, outcome, pieces, error = asyncio.run(consume())
    assert error is outcome["error"] is streamer.error
    assert len(streamer.records) == 1 and "".join(pieces).strip() == streamer.records[0].corrected_text.strip()
    streamer, outcome, pieces, error = asyncio.run(consume(raise_errors=False))
    assert error is None and isinstance(streamer.error, StreamAlignmentError) and pieces
    streamer, outcome, events, error = asyncio.run(consume(per_row=True))
    assert isinstance(error, StreamAlignmentError)
    assert [e.finished for e in events] == [False, True] and events[0].record is streamer.records[0]
