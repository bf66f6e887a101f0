"""Tiny, locally trained models and a tokenizer for fast, deterministic tests (no network).

A byte-level BPE tokenizer is trained on a small corpus of sentence-rich text; each tiny model
(2 layers, hidden 64) is trained for a few hundred steps on the same corpus so that it writes
sentence-like text (terminators, capitals, newlines), then converted to float64 so argmax ties
cannot flip between cached and uncached computation.
"""

from __future__ import annotations

import os
import random

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SUBJECTS = ["The cat", "A dog", "My friend", "The answer", "This model", "Our team", "The result", "Dr. Smith"]
_VERBS = ["is", "was", "seems", "looks", "became", "stays"]
_OBJECTS = ["very good", "3.5 times larger", "quite small", "ready now", "e.g. a test", "correct", "wrong", "fine"]


def corpus(seed: int = 0, n: int = 600) -> str:
    rng = random.Random(seed)
    parts = []
    for _ in range(n):
        kind = rng.random()
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(['.', '.', '.', '!', '?'])}"
        if kind < 0.1:
            s = f"\n{rng.randint(1, 9)}. {s}"
        elif kind < 0.2:
            s = f"\n\n{s}"
        elif kind < 0.25:
            s = f"{rng.randint(2, 40)}*{rng.randint(2, 40)} = {rng.randint(10, 999)}."
        parts.append(s)
    return " ".join(parts)


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([corpus(1)], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def model_config(arch: str, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)
    if arch == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=1024, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=1024, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=1024, **common)
    if arch == "mistral-sliding":
        return MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=1024, sliding_window=12, **common)
    raise ValueError(arch)


ARCHS = ("llama", "gpt2", "qwen2", "mistral-sliding")


def build_model(arch: str, tokenizer, *, steps: int = 150, seed: int = 0):
    """A tiny model of ``arch`` trained briefly on the corpus, returned in float64 eval mode. Trained on one torch
    thread: the sums of a matrix product depend on how many threads split them, so the weights (and every test's
    tokens) are the same whatever ``OMP_NUM_THREADS`` the process runs with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(arch, tokenizer, steps=steps, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _train(arch: str, tokenizer, *, steps: int, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = model_config(arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    ids = tokenizer(corpus(2), return_tensors="pt").input_ids[0]
    block = 64
    n_blocks = len(ids) // block
    data = ids[: n_blocks * block].view(n_blocks, block)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(0, n_blocks, (16,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model.to(torch.float64)


_CACHE: dict = {}


def cache_key() -> str:
    """What a saved tiny model depends on: this file (corpus, configs, training), transformers and torch."""
    import hashlib

    import transformers

    text = open(__file__, "rb").read() + f"{transformers.__version__} {torch.__version__}".encode()
    return hashlib.sha256(text).hexdigest()[:16]


def cached_tiny(arch: str):
    """(model, tokenizer) built once per process and, when ``TINY_MODEL_CACHE`` names a directory (``tests/conftest.py``
    sets it to pytest's cache), once per :func:`cache_key`: later processes load the saved float64 weights (the same
    numbers the build gave) instead of training again."""
    if "tok" not in _CACHE:
        _CACHE["tok"] = build_tokenizer()
    tok = _CACHE["tok"]
    if arch not in _CACHE:
        cache_dir = os.environ.get("TINY_MODEL_CACHE")
        path = os.path.join(cache_dir, cache_key(), arch) if cache_dir else None
        if path and os.path.isfile(os.path.join(path, "model.safetensors")):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
        else:
            model = build_model(arch, tok)
            if path:
                _save_atomically(model, path)
        _CACHE[arch] = model
    return _CACHE[arch], tok


def _save_atomically(model, path: str) -> None:
    """Save into a fresh directory, then rename it into place: a reader (another process) never sees half a model."""
    import shutil
    import tempfile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        model.save_pretrained(tmp)
        os.rename(tmp, path)
    except OSError:
        pass  # another process saved it first (the rename found a directory): theirs is the same model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
