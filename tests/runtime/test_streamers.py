import io
from contextlib import redirect_stdout
from threading import Thread

from transformers import TextStreamer, pipeline

from transformers_stream_aligner import (
    StreamAlignerIteratorStreamer,
    StreamAlignerStreamer,
    enable_stream_alignment,
)
from transformers_stream_aligner.runtime.prompt import question_from_prompt

from ..helpers import prompt_ids, rewrite


class CountingStreamer:
    def __init__(self):
        self.puts = []
        self.ends = 0
        self.drafts = []

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ends += 1


class DraftCounting(CountingStreamer):
    def put_draft(self, value):
        self.drafts.append(value.tolist())


def test_user_streamer_sees_prompt_once_and_end_once(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    ids = prompt_ids(tok)
    s = DraftCounting()
    out = model.generate(ids, max_new_tokens=60, do_sample=False, aligner=rewrite, streamer=s, return_dict_in_generate=True)
    assert s.ends == 1
    assert s.puts[0] == ids.tolist()  # the prompt, once
    streamed = [t for chunk in s.puts[1:] for t in chunk]
    assert streamed == out.sequences[0, ids.shape[1] :].tolist()  # only accepted (corrected) tokens
    assert sum(len(d) for d in s.drafts) >= len(streamed) - 5  # drafts went to put_draft, not put
    assert len(s.puts) - 1 == len(out.alignment_trace[0])


def test_text_streamers_print_the_corrected_answer(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    ids = prompt_ids(tok)
    for cls in (StreamAlignerStreamer, TextStreamer):
        buf = io.StringIO()
        streamer = cls(tok, skip_prompt=True, skip_special_tokens=True)
        with redirect_stdout(buf):
            out = model.generate(ids, max_new_tokens=80, do_sample=False, aligner=rewrite, streamer=streamer)
        final = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert buf.getvalue().rstrip("\n") == final.rstrip("\n")
        assert "An answer is that it" in final or "right" in final or "Doctor" in final or "big" in final


def test_show_drafts_prints_replaced_sentences(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    buf = io.StringIO()
    streamer = StreamAlignerStreamer(tok, skip_prompt=True, skip_special_tokens=True, show_drafts=True, draft_format="[{draft}]")
    with redirect_stdout(buf):
        out = model.generate(prompt_ids(tok), max_new_tokens=80, do_sample=False, aligner=rewrite, streamer=streamer,
                             return_dict_in_generate=True)
    changed = [r for r in out.alignment_trace[0] if r.changed]
    assert changed
    for r in changed:
        assert f"[{r.original_text}]" in buf.getvalue()
    assert streamer.records == out.alignment_trace[0]


def test_iterator_streamer(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    ids = prompt_ids(tok)
    streamer = StreamAlignerIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=60)
    result = {}

    def run():
        result["out"] = model.generate(ids, max_new_tokens=80, do_sample=False, aligner=rewrite, streamer=streamer)

    t = Thread(target=run)
    t.start()
    text = "".join(streamer)
    t.join()
    assert text == tok.decode(result["out"][0, ids.shape[1] :], skip_special_tokens=True)
    assert streamer.records and any(r.changed for r in streamer.records)


def test_pipeline_with_text_and_chat(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    questions = []

    def aligner(q, p, last):
        questions.append(q)
        return rewrite(q, p, last)

    res = pipe("The answer", aligner=aligner, max_new_tokens=60, do_sample=False)
    text = res[0]["generated_text"]
    direct = model.generate(prompt_ids(tok, "The answer"), max_new_tokens=60, do_sample=False, aligner=rewrite)
    assert text == tok.decode(direct[0], skip_special_tokens=True)
    assert questions and set(questions) == {"The answer"}

    questions.clear()
    chat = [{"role": "user", "content": "Is the cat fine?"}]
    res = pipe(chat, aligner=aligner, max_new_tokens=60, do_sample=False)
    messages = res[0]["generated_text"]
    assert messages[-1]["role"] == "assistant"
    assert set(questions) == {"Is the cat fine?"}  # the last user message, not the rendered prompt
    assert messages[-1]["content"].strip()


def test_question_from_chat_prompt(tiny_llama):
    _, tok = tiny_llama
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Last one?"}],
        add_generation_prompt=True, tokenize=True, return_dict=True,
    )["input_ids"]
    assert question_from_prompt(tok, ids) == "Last one?"
    plain = tok("Just text.", return_tensors="pt").input_ids[0]
    assert question_from_prompt(tok, plain) == "Just text."


def test_explicit_aligner_question(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    seen = set()
    model.generate(prompt_ids(tok), max_new_tokens=30, aligner=lambda q, p, last: seen.add(q) or last,
                   aligner_question="custom?")
    assert seen == {"custom?"}
    # the prefix given to the aligner is the corrected answer so far
    prefixes = []

    def spy(q, p, last):
        prefixes.append(p)
        return rewrite(q, p, last)

    out = model.generate(prompt_ids(tok), max_new_tokens=60, do_sample=False, aligner=spy, return_dict_in_generate=True)
    recs = [r for r in out.alignment_trace[0] if r.aligned]
    assert len(prefixes) == len(recs) >= 3 and prefixes[0] == ""
    for i, p in enumerate(prefixes[1:], 1):
        assert p == "".join(r.corrected_text for r in recs[:i]).strip()


def test_async_iterator_streamer_yields_the_corrected_answer(tiny_llama):
    import asyncio

    from transformers_stream_aligner import StreamAlignerAsyncIteratorStreamer

    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    ids = prompt_ids(tok)

    async def consume():
        streamer = StreamAlignerAsyncIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=60)
        result = {}

        def run():
            result["out"] = model.generate(ids, max_new_tokens=80, do_sample=False, aligner=rewrite, streamer=streamer)

        thread = Thread(target=run)
        thread.start()
        text = "".join([piece async for piece in streamer])
        await asyncio.to_thread(thread.join)
        return text, result["out"], streamer

    text, out, streamer = asyncio.run(consume())
    assert text == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert streamer.records and any(r.changed for r in streamer.records)
