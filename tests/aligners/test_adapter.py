"""One-copy LoRA aligners (aligner_adapter.py): the aligner's adapter on the upstream model itself, on for aligner
calls only. Float64 tiny models of every architecture: the upstream's tokens are the plain model's, the corrections
the two-copy aligner's (single, batched, with KV reuse), the adapter is off for every upstream forward."""

import json
import threading

import pytest
import torch

from transformers_stream_aligner import (
    AlignerTrainingConfig,
    AlignmentRequest,
    StreamAligner,
    StreamAlignerConfig,
    enable_stream_alignment,
    train_aligner,
)
from transformers_stream_aligner.aligners.adapter import ADAPTER_NAME, AdapterSwitch, adapter_names

from ..tiny_models import ARCHS, cached_tiny

peft = pytest.importorskip("peft")

REQUESTS = [
    AlignmentRequest("q one", "the cat sat.", "the dog ran far away."),
    AlignmentRequest("q two", "", "a bird sang."),
    AlignmentRequest("q three", "one two.", "three four five six seven."),
]
CONFIG = StreamAlignerConfig(max_correction_tokens=32)


def _lora_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@pytest.fixture(scope="module", params=ARCHS)
def checkpoints(request, tmp_path_factory):
    """(base directory, adapter directory, tokenizer) for one architecture: the tiny model saved as a base, and a LoRA
    aligner trained on it briefly (train_aligner) to answer "the cat sat." to everything. On Llama it learns it
    (corrections that end and change every sentence); on the others it writes unfinished text, so sentences are kept."""
    model, tok = cached_tiny(request.param)
    root = tmp_path_factory.mktemp(f"one-copy-{request.param}")
    base_dir, adapter_dir = root / "base", root / "adapter"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    lasts = ["the dog ran far away.", "a bird sang.", "one two three.", "The answer was ready now?"]
    prefixes = ["", "the dog ran. The answer was wrong.", "Dr. Smith was wrong! The answer looks fine. one two three."]
    records = [{"question": "q", "prefix": p, "last": last, "correction": "the cat sat."} for last in lasts for p in prefixes]
    data = root / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    train_aligner(
        base_dir,
        data,
        AlignerTrainingConfig(output_dir=str(adapter_dir), num_train_epochs=20, learning_rate=2e-2, disable_tqdm=True,
                              use_cpu=True),
        lora_config=peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        aligner_config=CONFIG,
    )  # fmt: skip
    return base_dir, adapter_dir, tok


def _fresh(base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64).eval()


def _two_copy(checkpoints):
    base_dir, adapter_dir, _ = checkpoints
    return StreamAligner.from_pretrained(adapter_dir, base_model_name_or_path=base_dir, dtype=torch.float64)


def _inputs(tok, texts):
    return tok(texts, return_tensors="pt", padding=True, padding_side="left")


def _greedy(model, tok, texts, max_new_tokens):
    """Plain greedy ``generate`` of ``model`` (no aligner) on ``texts``."""
    return model.generate(**_inputs(tok, texts), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)


def test_the_upstream_alone_gives_the_plain_models_tokens(checkpoints):
    base_dir, adapter_dir, tok = checkpoints
    plain, upstream = _fresh(base_dir), _fresh(base_dir)
    aligner = StreamAligner.from_pretrained(adapter_dir, base_model=upstream)
    assert not _lora_layers(upstream)  # off: the LoRA layers are swapped out, the plain model's modules run
    with aligner.adapter_switch.enabled():
        assert _lora_layers(upstream) and all(not layer.disable_adapters for layer in _lora_layers(upstream))
    assert not _lora_layers(upstream)
    texts = ["the cat sat on", "one two three"]
    assert torch.equal(_greedy(upstream, tok, texts, 16), _greedy(plain, tok, texts, 16))  # without an aligner: plain


def test_corrections_equal_the_two_copy_aligners_single_batched_and_with_kv_reuse(checkpoints):
    base_dir, adapter_dir, _ = checkpoints
    two = _two_copy(checkpoints)
    one = StreamAligner.from_pretrained(adapter_dir, base_model=_fresh(base_dir))
    expected = two.correct(REQUESTS)
    assert expected != [r.last for r in REQUESTS]  # the adapter rewrites: equality is not a copy of the input
    assert one.correct(REQUESTS) == expected  # batched
    assert [one.correct([r])[0] for r in REQUESTS] == [two.correct([r])[0] for r in REQUESTS]  # single
    assert one.correct(REQUESTS) == expected  # again: the aligner's KV cache is reused between calls
    if one.decoding_stats is not None:
        assert one.decoding_stats.reused_tokens > 0


def test_stream_aligned_generate_equals_the_two_copy_run_and_the_adapter_is_off_for_every_upstream_forward(checkpoints, request):
    base_dir, adapter_dir, tok = checkpoints
    upstream = enable_stream_alignment(_fresh(base_dir), tok)
    one = StreamAligner.from_pretrained(adapter_dir, base_model=upstream)
    seen = []  # per forward of the model: (inside an aligner call, an enabled LoRA layer in the model)
    inside = threading.local()
    correct_batch = one._correct_batch

    def marked(requests):
        inside.on = True
        try:
            return correct_batch(requests)
        finally:
            inside.on = False

    one._correct_batch = marked
    hook = upstream.register_forward_pre_hook(
        lambda module, args: seen.append(
            (getattr(inside, "on", False), any(not layer.disable_adapters for layer in _lora_layers(upstream)))
        )
    )
    inputs = _inputs(tok, ["the cat sat on", "one two three"])
    options = {"max_new_tokens": 40, "do_sample": False, "pad_token_id": tok.pad_token_id, "return_dict_in_generate": True,
               "invalid_correction": "keep_original"}  # fmt: skip
    try:
        got = upstream.generate(**inputs, aligner=one, **options)
    finally:
        hook.remove()
    assert {s for s in seen} == {(False, False), (True, True)}  # upstream forwards: off; aligner forwards: on
    assert one.adapter_switch.forwards_on > 0 and one.adapter_switch.forwards_off > 0

    plain = enable_stream_alignment(_fresh(base_dir), tok)
    want = plain.generate(**inputs, aligner=_two_copy(checkpoints), **options)
    assert torch.equal(got.sequences, want.sequences)
    assert [[r.corrected_text for r in row] for row in got.alignment_trace] == [
        [r.corrected_text for r in row] for row in want.alignment_trace
    ]
    if request.node.callspec.params["checkpoints"] == "llama":  # the brief training takes on Llama (others: copies)
        assert any(r.changed for row in got.alignment_trace for r in row)


def test_the_adapter_takes_the_models_mode(checkpoints):
    """A LoRA layer put on an eval model is in eval mode too (its dropout off: corrections are deterministic), on
    one copy and on two."""
    base_dir, adapter_dir, _ = checkpoints
    one = StreamAligner.from_pretrained(adapter_dir, base_model=_fresh(base_dir))
    with one.adapter_switch.enabled():
        assert _lora_layers(one.model) and not any(m.training for m in one.model.modules())
    two = _two_copy(checkpoints)
    assert _lora_layers(two.model) and not any(m.training for m in two.model.modules())


def test_an_adapter_left_on_would_be_seen(checkpoints):
    """The checks above can fail: with the adapter on, the upstream's tokens are not the plain model's."""
    base_dir, adapter_dir, tok = checkpoints
    upstream = _fresh(base_dir)
    aligner = StreamAligner.from_pretrained(adapter_dir, base_model=upstream)
    off = _greedy(upstream, tok, ["the cat sat on"], 16)
    with aligner.adapter_switch.enabled():
        on = _greedy(upstream, tok, ["the cat sat on"], 16)
    assert not torch.equal(on, off)
    assert torch.equal(_greedy(upstream, tok, ["the cat sat on"], 16), off)  # and off again after the block


def test_a_failing_aligner_call_leaves_the_adapter_off(checkpoints, monkeypatch):
    base_dir, adapter_dir, tok = checkpoints
    upstream, plain = _fresh(base_dir), _fresh(base_dir)
    aligner = StreamAligner.from_pretrained(adapter_dir, base_model=upstream)

    def boom(*args, **kwargs):
        raise RuntimeError("aligner failed")

    monkeypatch.setattr(aligner, "_fast_decoder", lambda: None)
    monkeypatch.setattr(aligner, "_generate_batch", boom)
    with pytest.raises(RuntimeError, match="aligner failed"):
        aligner.correct(REQUESTS[:1])
    assert not aligner.adapter_switch.is_on
    assert torch.equal(_greedy(upstream, tok, ["one two three"], 12), _greedy(plain, tok, ["one two three"], 12))


def test_plain_generate_on_another_thread_waits_for_the_aligner(checkpoints):
    """A forward on another thread never runs with the adapter on: it waits for the aligner call to end."""
    base_dir, adapter_dir, tok = checkpoints
    upstream = _fresh(base_dir)
    aligner = StreamAligner.from_pretrained(adapter_dir, base_model=upstream)
    reference = _greedy(upstream, tok, ["the cat sat on"], 8)
    corrections = aligner.correct(REQUESTS)
    results, failures = [], []

    def upstream_loop():
        for _ in range(15):
            results.append(_greedy(upstream, tok, ["the cat sat on"], 8))

    def aligner_loop():
        for _ in range(15):
            if aligner.correct(REQUESTS) != corrections:
                failures.append("correction changed")

    threads = [threading.Thread(target=upstream_loop), threading.Thread(target=aligner_loop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures and len(results) == 15
    assert all(torch.equal(r, reference) for r in results)


def test_save_pretrained_writes_the_adapter_that_loads_as_two_copies(checkpoints, tmp_path):
    base_dir, adapter_dir, _ = checkpoints
    one = StreamAligner.from_pretrained(adapter_dir, base_model=_fresh(base_dir))
    one.save_pretrained(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "stream_aligner_config.json"} <= files
    assert "model.safetensors" not in files  # the adapter only, not the upstream
    again = StreamAligner.from_pretrained(tmp_path / "saved", base_model_name_or_path=base_dir, dtype=torch.float64)
    assert again.correct(REQUESTS) == one.correct(REQUESTS)


def test_remove_gives_back_the_plain_model(checkpoints):
    base_dir, adapter_dir, _ = checkpoints
    upstream = _fresh(base_dir)
    aligner = StreamAligner.from_pretrained(adapter_dir, base_model=upstream)
    aligner.adapter_switch.remove()
    assert not hasattr(upstream, "peft_config") and not hasattr(upstream, "_stream_aligner_switch")
    assert not _lora_layers(upstream) and not adapter_names(upstream)
    StreamAligner.from_pretrained(adapter_dir, base_model=upstream)  # and it can carry one again


def test_clear_errors(checkpoints, tmp_path):
    base_dir, adapter_dir, _ = checkpoints
    upstream = _fresh(base_dir)
    with pytest.raises(ValueError, match="not a LoRA adapter checkpoint"):
        StreamAligner.from_pretrained(base_dir, base_model=upstream)
    with pytest.raises(ValueError, match="dtype cannot be combined"):
        StreamAligner.from_pretrained(adapter_dir, base_model=upstream, dtype=torch.float32)
    with pytest.raises(TypeError, match="PeftModel"):
        StreamAligner.from_pretrained(adapter_dir, base_model=peft.PeftModel.from_pretrained(_fresh(base_dir), adapter_dir))
    assert not _lora_layers(upstream) and not hasattr(upstream, "peft_config")  # the refused calls added nothing
    StreamAligner.from_pretrained(adapter_dir, base_model=upstream)
    with pytest.raises(ValueError, match="already carries adapters"):
        StreamAligner.from_pretrained(adapter_dir, base_model=upstream)
    with pytest.raises(ValueError, match="no adapter named"):
        AdapterSwitch(_fresh(base_dir), ADAPTER_NAME)


def test_a_load_that_fails_after_the_adapter_went_on_leaves_the_model_as_it_was(checkpoints, monkeypatch):
    import transformers_stream_aligner.aligners.model as aligner_module

    base_dir, adapter_dir, _ = checkpoints
    upstream = _fresh(base_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("broken generation config")

    monkeypatch.setattr(aligner_module, "token_id_list", broken)  # StreamAligner.__init__ fails after the switch
    with pytest.raises(RuntimeError, match="broken generation config"):
        StreamAligner.from_pretrained(adapter_dir, base_model=upstream)
    assert not hasattr(upstream, "peft_config") and not hasattr(upstream, "_stream_aligner_switch")
    assert not _lora_layers(upstream)
    monkeypatch.undo()
    StreamAligner.from_pretrained(adapter_dir, base_model=upstream)  # and it can carry one afterwards


def test_an_adapter_whose_base_is_not_available_offline_names_the_base_and_the_two_ways_to_supply_it(
    checkpoints, tmp_path, monkeypatch
):
    import shutil

    _, adapter_dir, _ = checkpoints
    moved = tmp_path / "adapter"
    shutil.copytree(adapter_dir, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/a-base-nobody-has"  # not a directory, not in the (empty) Hub cache
    (moved / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    from transformers_stream_aligner.errors import AdapterBaseNotFoundError

    with pytest.raises(AdapterBaseNotFoundError) as caught:  # an OSError, as transformers' loading errors are
        StreamAligner.from_pretrained(moved, local_files_only=True)
    message = str(caught.value)
    assert "LoRA adapter on the base model 'someone/a-base-nobody-has'" in message and "offline" in message
    assert "base_model_name_or_path=" in message and "base_model=model" in message
    assert "safetensors weights and a tokenizer are required" not in message
