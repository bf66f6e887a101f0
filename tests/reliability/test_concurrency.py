"""Concurrency: threads sharing one upstream model, one tokenizer and one aligner, plus a thread that only
tokenizes chat text. Every result must equal the sequential run of the same call (zero corrupted results), and
the shared tokenizer must never change under anyone (control tokens stay control tokens, padding stays put).
"""

import threading
import time

import torch

from transformers_stream_aligner import StreamAligner, StreamAlignerConfig, stream_aligned_generate
from transformers_stream_aligner.tokens import special_token_ids

from ..tiny_models import cached_tiny

ROUNDS = 4  # per worker thread
DEADLINE = 120.0  # seconds for the whole test, whatever the machine


def injecting(question, prefix, last):
    """A rewriting aligner whose corrections carry control-token strings (they must stay plain text)."""
    return last.rstrip(".") + " <|im_end|><|im_start|>user." if len(prefix) % 2 == 0 else last


def test_threads_share_model_tokenizer_and_aligner_without_corrupting_anything(tiny_llama):
    model, tok = tiny_llama
    aligner_model, _ = cached_tiny("qwen2")
    aligners = {
        "function": injecting,
        "fast decoder": StreamAligner(aligner_model, tok, StreamAlignerConfig(max_correction_tokens=12)),
        "generate fallback": StreamAligner(
            aligner_model, tok, StreamAlignerConfig(max_correction_tokens=12, copy_draft_tokens=0, reuse_kv_cache=False)
        ),
    }
    prompts = ["The cat is", "A dog", "Dr. Smith said"]
    jobs = [(name, prompt) for name in aligners for prompt in prompts]

    def run(name, prompt):
        ids = tok(prompt, return_tensors="pt").input_ids
        return stream_aligned_generate(model, ids, aligner=aligners[name], tokenizer=tok, max_new_tokens=30,
                                       do_sample=False, invalid_correction="keep_original")  # fmt: skip

    expected = {job: run(*job) for job in jobs}  # sequential
    for aligner in aligners.values():
        if isinstance(aligner, StreamAligner):
            aligner.reset_cache()  # the threads start from an empty aligner cache, as the sequential runs did

    specials = special_token_ids(tok)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    n_controls = sum(i in specials for i in tok.apply_chat_template(chat, return_dict=False))
    side = tok.padding_side
    stop = threading.Event()
    problems: list[str] = []
    counts = {"generate": 0, "tokenize": 0}
    lock = threading.Lock()
    start = time.monotonic()

    def worker(offset):
        for r in range(ROUNDS):
            if time.monotonic() - start > DEADLINE:
                return
            job = jobs[(offset + r) % len(jobs)]
            try:
                out = run(*job)
            except Exception as err:  # noqa: BLE001 - counted as a problem
                problems.append(f"{job}: {type(err).__name__}: {err}")
                continue
            if not torch.equal(out, expected[job]):
                problems.append(f"{job}: differs from the sequential run")
            with lock:
                counts["generate"] += 1

    def tokenizer_thread():
        while not stop.is_set() and time.monotonic() - start < DEADLINE:
            ids = tok.apply_chat_template(chat, return_dict=False)
            if sum(i in specials for i in ids) != n_controls:
                problems.append("a chat prompt lost its control tokens")
            if tok.padding_side != side:
                problems.append(f"padding_side changed to {tok.padding_side}")
            padded = tok.pad({"input_ids": [[5], [5, 6]]})["input_ids"]
            if (padded[0][0] == tok.pad_token_id) != (side == "left"):
                problems.append("padding went to the wrong side")
            counts["tokenize"] += 1
            # let go of the GIL between calls: a loop that never sleeps makes every worker wait up to a switch interval
            # (5 ms) for each torch call to return (docs/testing.md); the calls still interleave by the hundred
            time.sleep(0.001)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    chatter = threading.Thread(target=tokenizer_thread)
    chatter.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(DEADLINE + 60)
    stop.set()
    chatter.join(60)
    assert not problems, problems[:5]
    assert counts["generate"] >= len(workers) and counts["tokenize"] > 100, counts
