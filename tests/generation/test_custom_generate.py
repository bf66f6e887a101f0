"""transformers' ``custom_generate`` route on a model nobody patched: the exported folder from a local directory and
from a populated local Hub cache (offline), a model directory that carries it, and the callable."""

import functools
import os
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout
from io import StringIO

import pytest
import torch
from transformers import AutoModelForCausalLM, TextIteratorStreamer, TextStreamer

from transformers_stream_aligner import (
    MIN_TRANSFORMERS_VERSION,
    StreamAlignerStreamer,
    export_custom_generate,
    stream_aligned_decoding,
    stream_aligned_generate,
)
from transformers_stream_aligner.serving.custom_generate import check_transformers_version

from ..helpers import prompt_ids, rewrite
from ..tiny_models import cached_tiny

REPO_ID = "stream-aligner-tests/stream-aligned-generate"


def identity(question, prefix, last):
    return last


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """The tiny llama saved as a model directory, the exported folder, and a model directory carrying it."""
    model, tok = cached_tiny("llama")
    root = tmp_path_factory.mktemp("custom_generate")
    model_dir, carrying = root / "model", root / "carrying"
    for directory in (model_dir, carrying):
        model.save_pretrained(directory)
        tok.save_pretrained(directory)
    export_custom_generate(carrying)
    method = export_custom_generate(root / "method")
    return {"model": model_dir, "method": method, "carrying": carrying, "root": root}


@pytest.fixture
def unpatched(dirs):
    model = AutoModelForCausalLM.from_pretrained(dirs["model"], dtype=torch.float64)
    assert type(model).__name__ == "LlamaForCausalLM" and type(model).__module__.startswith("transformers.")
    return model


def _settings(**extra):
    return {"max_new_tokens": 60, "do_sample": False, **extra}


def test_the_folder_is_hub_ready(dirs):
    method = dirs["method"]
    readme = (method / "README.md").read_text()
    assert readme.startswith("---\n") and "custom_generate" in readme.split("---")[1]  # the Hub's tag
    requirements = (method / "custom_generate" / "requirements.txt").read_text()
    assert f"transformers>={MIN_TRANSFORMERS_VERSION}" in requirements and "transformers-stream-aligner" in requirements
    assert "from transformers_stream_aligner.serving.custom_generate import" in (method / "custom_generate" / "generate.py").read_text()


def test_local_directory_identity_is_plain_generate_and_rewrites_match_the_patched_route(dirs, unpatched):
    _, tok = cached_tiny("llama")
    ids = prompt_ids(tok, "The answer")
    plain = unpatched.generate(ids, **_settings())
    route = functools.partial(unpatched.generate, ids, custom_generate=str(dirs["method"]), trust_remote_code=True,
                              tokenizer=tok, **_settings())  # fmt: skip
    assert torch.equal(route(aligner=identity), plain)
    patched = stream_aligned_generate(unpatched, ids, aligner=rewrite, tokenizer=tok, **_settings())
    out = route(aligner=rewrite)
    assert torch.equal(out, patched) and not torch.equal(out, plain)
    assert type(unpatched).__module__.startswith("transformers.")  # nothing was patched


def test_local_directory_needs_consent(dirs, unpatched):
    _, tok = cached_tiny("llama")
    with pytest.raises(ValueError, match="trust_remote_code"):
        unpatched.generate(prompt_ids(tok), custom_generate=str(dirs["method"]), aligner=identity, tokenizer=tok,
                           **_settings())  # fmt: skip


def test_older_transformers_are_refused():
    check_transformers_version()  # this one is fine
    with pytest.raises(ImportError, match="CVE-2026-80047"):
        check_transformers_version("5.11.0")


def test_return_dict_and_streamer_through_the_folder(dirs, unpatched):
    _, tok = cached_tiny("llama")
    ids = prompt_ids(tok, "The answer")
    buf = StringIO()
    with redirect_stdout(buf):
        out = unpatched.generate(ids, custom_generate=str(dirs["method"]), trust_remote_code=True, aligner=rewrite,
                                 tokenizer=tok, streamer=StreamAlignerStreamer(tok, skip_prompt=True),
                                 return_dict_in_generate=True, **_settings())  # fmt: skip
    assert any(r.changed for r in out.alignment_trace[0])
    assert buf.getvalue()[:-1] == tok.decode(out.sequences[0, ids.shape[1] :])


def _copy_tree(src, dst):
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())


def test_populated_hub_cache_offline(dirs, tmp_path):
    """``custom_generate="org/repo"`` with HF_HUB_OFFLINE=1: the folder comes from the local Hub cache."""
    hub = tmp_path / "hub"
    snapshot = hub / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / ("0" * 40)
    _copy_tree(dirs["method"], snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    script = textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(dirs["model"])!r}, dtype=torch.float64)
        tok = AutoTokenizer.from_pretrained({str(dirs["model"])!r})
        ids = tok("The answer", return_tensors="pt").input_ids
        plain = model.generate(ids, max_new_tokens=60, do_sample=False)
        def identity(q, p, last):
            return last
        def rewrite(q, p, last):
            return last.replace("wrong", "right").replace("The answer", "An answer is that it")
        kw = dict(custom_generate={REPO_ID!r}, trust_remote_code=True, tokenizer=tok, max_new_tokens=60, do_sample=False)
        assert torch.equal(model.generate(ids, aligner=identity, **kw), plain)
        from transformers_stream_aligner import stream_aligned_generate
        expected = stream_aligned_generate(model, ids, aligner=rewrite, tokenizer=tok, max_new_tokens=60, do_sample=False)
        out = model.generate(ids, aligner=rewrite, **kw)
        assert torch.equal(out, expected) and not torch.equal(out, plain)
        print("HUB-CACHE-OK")
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub), HF_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "HUB-CACHE-OK" in done.stdout, done.stderr[-3000:]


def test_a_model_directory_carrying_the_folder_generates_stream_aligned(dirs):
    """from_pretrained(trust_remote_code=True) makes the folder's generate the model's: aligner= works, without it the
    model is plain; the tokenizer is found in the model's own directory."""
    _, tok = cached_tiny("llama")
    ids = prompt_ids(tok, "The answer")
    model = AutoModelForCausalLM.from_pretrained(dirs["carrying"], dtype=torch.float64, trust_remote_code=True)
    plain = AutoModelForCausalLM.from_pretrained(dirs["model"], dtype=torch.float64).generate(ids, **_settings())
    assert torch.equal(model.generate(ids, **_settings()), plain)
    assert torch.equal(model.generate(ids, aligner=identity, **_settings()), plain)
    expected = stream_aligned_generate(model, ids, aligner=rewrite, tokenizer=tok, **_settings())
    assert torch.equal(model.generate(ids, aligner=rewrite, **_settings()), expected)  # tokenizer from name_or_path
    without = AutoModelForCausalLM.from_pretrained(dirs["carrying"], dtype=torch.float64)  # no consent: stock
    with pytest.raises(ValueError, match="aligner"):
        without.generate(ids, aligner=identity, **_settings())


def test_a_served_name_the_model_directory_does_not_offer_is_refused_and_ends_the_streamer(dirs, tmp_path, monkeypatch):
    from transformers_stream_aligner import ServingConfig

    _, tok = cached_tiny("llama")
    ids = prompt_ids(tok, "The answer")
    config = tmp_path / "serving.json"
    ServingConfig(aligners={"rewrite": "tests.helpers:rewrite"}).to_json_file(config)
    monkeypatch.setenv("STREAM_ALIGNER_SERVING_CONFIG", str(config))
    model = AutoModelForCausalLM.from_pretrained(dirs["carrying"], dtype=torch.float64, trust_remote_code=True)
    expected = stream_aligned_generate(model, ids, aligner=rewrite, tokenizer=tok, **_settings())
    assert torch.equal(model.generate(ids, stream_aligner="rewrite", **_settings()), expected)  # a name it offers
    assert torch.equal(model.generate(ids, **_settings()), model.generate(ids, aligner=None, **_settings()))  # no default
    streamer = TextIteratorStreamer(tok, timeout=5)
    with pytest.raises(ValueError, match="not one this server offers"):
        model.generate(ids, stream_aligner="/etc/passwd", streamer=streamer, **_settings())
    assert "".join(streamer) == ""  # ended (an unended streamer raises Empty here), nothing streamed


# ---------------------------------------------------------------------------------------------- the callable
def test_callable_identity_is_plain_generate_and_rewrites_match_the_patched_route(tiny, dirs):
    model, tok = tiny
    ids = prompt_ids(tok, "The answer")
    plain = model.generate(ids, **_settings())
    method = functools.partial(stream_aligned_decoding, tokenizer=tok)  # generate drops tokenizer= for callables
    assert torch.equal(model.generate(ids, custom_generate=method, aligner=identity, **_settings()), plain)
    expected = stream_aligned_generate(model, ids, aligner=rewrite, tokenizer=tok, **_settings())
    out = model.generate(ids, custom_generate=method, aligner=rewrite, **_settings())
    assert torch.equal(out, expected)
    assert torch.equal(model.generate(ids, custom_generate=method, **_settings()), plain)  # no aligner: sampling loop


def test_callable_finds_the_model_tokenizer_and_ends_the_streamer(dirs, unpatched):
    _, tok = cached_tiny("llama")
    ids = prompt_ids(tok, "The answer")
    expected = stream_aligned_generate(unpatched, ids, aligner=rewrite, tokenizer=tok, **_settings())
    buf = StringIO()
    with redirect_stdout(buf):
        out = unpatched.generate(ids, custom_generate=stream_aligned_decoding, aligner=rewrite,
                                 streamer=TextStreamer(tok, skip_prompt=True), **_settings())  # fmt: skip
    assert torch.equal(out, expected)
    assert buf.getvalue() == tok.decode(expected[0, ids.shape[1] :]) + "\n"  # corrected text once, then end()
    streamer = TextIteratorStreamer(tok, timeout=60)
    unpatched.generate(ids, custom_generate=stream_aligned_decoding, aligner=rewrite, streamer=streamer, **_settings())
    assert "".join(streamer) == tok.decode(expected[0])  # the prompt once (put by generate), ended


def test_callable_keeps_the_callers_processors_and_criteria(tiny_llama):
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList

    model, tok = tiny_llama
    ids = prompt_ids(tok, "The answer")
    banned = model.generate(ids, **_settings())[0, ids.shape[1] + 2].item()

    class Ban(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, banned] = -float("inf")
            return scores

    class StopAt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= ids.shape[1] + 25, dtype=torch.bool)

    extra = {"logits_processor": LogitsProcessorList([Ban()]), "stopping_criteria": StoppingCriteriaList([StopAt()])}
    plain = model.generate(ids, **extra, **_settings())
    method = functools.partial(stream_aligned_decoding, tokenizer=tok)
    out = model.generate(ids, custom_generate=method, aligner=identity, **extra, **_settings())
    assert banned not in out[0, ids.shape[1] :].tolist()
    assert torch.equal(out, plain)


def test_a_patched_model_runs_custom_generate_too(tiny_llama, dirs):
    model, tok = tiny_llama
    from transformers_stream_aligner import enable_stream_alignment

    enable_stream_alignment(model, tok)
    ids = prompt_ids(tok, "The answer")
    expected = stream_aligned_generate(model, ids, aligner=rewrite, tokenizer=tok, **_settings())
    folder = model.generate(ids, custom_generate=str(dirs["method"]), trust_remote_code=True, aligner=rewrite,
                            tokenizer=tok, **_settings())  # fmt: skip
    method = functools.partial(stream_aligned_decoding, tokenizer=tok)
    assert torch.equal(folder, expected)
    assert torch.equal(model.generate(ids, custom_generate=method, aligner=rewrite, **_settings()), expected)


def test_cli_exports_and_refuses_to_overwrite(tmp_path):
    from transformers_stream_aligner.cli import main

    assert main(["export-custom-generate", str(tmp_path / "m"), "--aligner", "a=pkg.mod:fn", "--default-aligner", "a"]) == 0
    assert (tmp_path / "m" / "stream_aligner_serving.json").is_file()
    assert main(["export-custom-generate", str(tmp_path / "m")]) == 2
    assert main(["export-custom-generate", str(tmp_path / "m"), "--overwrite"]) == 0
    assert main(["export-custom-generate", str(tmp_path / "n"), "--aligner", "broken"]) == 2


def test_cli_push_to_hub_uploads_the_folder_in_one_commit(tmp_path, monkeypatch):
    import huggingface_hub

    from transformers_stream_aligner.cli import main

    calls = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: calls.append(("upload", kw)))
    assert main(["export-custom-generate", str(tmp_path / "m"), "--push-to-hub", "me/generate", "--private"]) == 0
    assert calls[0] == ("create", "me/generate", {"private": True, "exist_ok": True})
    assert calls[1][0] == "upload" and calls[1][1]["repo_id"] == "me/generate"
    assert calls[1][1]["folder_path"] == str(tmp_path / "m")
    assert len(calls) == 2
