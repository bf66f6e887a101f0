"""StreamAligner: prompt building, correct(), save/load symmetry, Hub cache offline, push_to_hub."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from transformers_stream_aligner import (
    CONFIG_NAME,
    GEMMA_WRAPPER,
    AlignmentRequest,
    StreamAligner,
    StreamAlignerConfig,
)

from ..helpers import populate_hub_cache

REQS = [
    AlignmentRequest("What is 17*23?", "", "17*23 = 381."),
    AlignmentRequest("Is the cat fine?", "The cat is here.", "The answer was wrong."),
    AlignmentRequest("Q", "A long prefix. With two sentences.", "Dr. Smith stays correct."),
]


@pytest.fixture(scope="module")
def aligner(tiny_llama):
    model, tok = tiny_llama
    return StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=12, base_model="tiny/llama"))


def test_config_validation_and_unknown_keys(tmp_path, caplog):
    with pytest.raises(ValueError, match=r"missing the placeholder\(s\) \{last\}"):
        StreamAlignerConfig(instruction_template="{question} {prefix}")
    # an aligner that reads the sentence alone: {question} and {prefix} are optional
    alone = StreamAlignerConfig(instruction_template=">>> {last}\n<<< ", prompt_wrapper="{instruction}")
    assert alone.format_instruction(question="Q?", prefix="P.", last="2+2=5.") == ">>> 2+2=5.\n<<< "
    with pytest.raises(ValueError, match=r"\{instruction\}"):
        StreamAlignerConfig(prompt_wrapper="<turn>")
    cfg = StreamAlignerConfig(prompt_wrapper=GEMMA_WRAPPER, max_sentence_tokens=99)
    cfg.save_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    data["from_the_future"] = 1
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        loaded = StreamAlignerConfig.from_pretrained(tmp_path)
    assert "from_the_future" in caplog.text
    assert loaded.prompt_wrapper == GEMMA_WRAPPER and loaded.max_sentence_tokens == 99
    empty = tmp_path / "plain-checkpoint"
    empty.mkdir()
    assert StreamAlignerConfig.from_pretrained(empty) is None  # no config file: caller uses the defaults


def test_reference_prompt_and_wrappers(aligner):
    req = AlignmentRequest("Q {last}?", "P.", "L.")
    cfg = StreamAlignerConfig(prompt_wrapper=GEMMA_WRAPPER)
    text = cfg.wrap(cfg.format_instruction(question=req.question, prefix=req.prefix, last=req.last))
    assert text == (
        "<start_of_turn>user\n##Question: Q {last}? | ##Answer_Prefix: P. | ##Answer_Last_Sentence: L. | "
        "##Your_Revision: <end_of_turn>\n<start_of_turn>model"
    )
    # default: the aligner tokenizer's chat template
    chat = aligner.build_prompt(req)
    assert chat.startswith("<|im_start|>user\n##Question: Q {last}?") and chat.endswith("<|im_start|>assistant\n")

    class NoTemplate:
        chat_template = None

    assert StreamAlignerConfig().wrap("x", NoTemplate()) == "x"


def test_correct_is_batched_and_matches_one_by_one(aligner):
    batched = aligner.correct(REQS)
    single = [aligner.correct([r])[0] for r in REQS]
    assert batched == single
    assert all(isinstance(t, str) and t == t.strip() for t in batched)
    assert all(aligner.tokenizer.eos_token not in t for t in batched)
    assert aligner.correct([]) == []


def test_save_reload_gives_identical_corrections(aligner, tmp_path):
    aligner.save_pretrained(tmp_path)
    names = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", CONFIG_NAME, "README.md", "tokenizer.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    card = (tmp_path / "README.md").read_text()
    assert "library_name: transformers" in card and "stream-aligner" in card and "base_model: tiny/llama" in card
    assert "##Question: {question}" in card and "StreamAligner.from_pretrained" in card
    loaded = StreamAligner.from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.config == aligner.config
    assert loaded.correct(REQS) == aligner.correct(REQS)


def test_plain_causal_lm_checkpoint_loads_with_reference_defaults(tiny_llama, tmp_path):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = StreamAligner.from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.config == StreamAlignerConfig()


def test_safetensors_only(tiny_llama, tmp_path):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path, safe_serialization=False)
    tok.save_pretrained(tmp_path)
    if (tmp_path / "model.safetensors").exists():  # transformers 5 may always write safetensors
        (tmp_path / "model.safetensors").unlink()
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError):
        StreamAligner.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="safetensors"):
        StreamAligner.from_pretrained(tmp_path, use_safetensors=False)


def test_load_by_repo_id_from_offline_hub_cache(aligner, tmp_path):
    saved = tmp_path / "saved"
    aligner.save_pretrained(saved)
    hub_cache = tmp_path / "hub"
    populate_hub_cache(saved, hub_cache, "stream-aligner-tests/tiny-aligner")
    expected = aligner.correct(REQS[:2])
    script = textwrap.dedent(
        f"""
        import json, torch
        from transformers_stream_aligner import AlignmentRequest, StreamAligner
        a = StreamAligner.from_pretrained("stream-aligner-tests/tiny-aligner", dtype=torch.float64)
        reqs = [AlignmentRequest(*r) for r in {[(r.question, r.prefix, r.last) for r in REQS[:2]]!r}]
        try:  # a repo that is not in the cache fails clearly, offline
            StreamAligner.from_pretrained("stream-aligner-tests/missing")
            missing = "loaded"
        except Exception as err:
            missing = f"{{type(err).__name__}}: {{err}}"
        print(json.dumps({{"out": a.correct(reqs), "max": a.config.max_correction_tokens, "missing": missing}}))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache), HF_HOME=str(tmp_path / "home"))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    missing = got.pop("missing")
    assert got == {"out": expected, "max": 12}
    assert missing.startswith(("OSError", "FileNotFoundError", "ValueError")) and "stream-aligner-tests/missing" in missing, missing


def test_push_to_hub_makes_one_commit_with_everything(aligner, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    calls = {"create_repo": [], "create_commit": [], "create_branch": []}

    def fake_create_repo(self, repo_id, **kw):
        calls["create_repo"].append((repo_id, kw))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_create_branch(self, repo_id, **kw):
        calls["create_branch"].append((repo_id, kw))

    def fake_create_commit(self, repo_id, operations, **kw):
        ops = list(operations)
        files = {}
        for op in ops:
            content = op.path_or_fileobj
            if isinstance(content, (str, os.PathLike)):
                with open(content, "rb") as f:
                    content = f.read()
            elif hasattr(content, "read"):
                content = content.read()
            files[op.path_in_repo] = content
        calls["create_commit"].append((repo_id, files, kw))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_branch", fake_create_branch)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    result = aligner.push_to_hub("me/my-aligner", private=True, token="hf_fake", commit_message="first")
    assert result == "commit-info"
    assert calls["create_repo"][0][0] == "me/my-aligner" and calls["create_repo"][0][1]["private"] is True
    assert len(calls["create_commit"]) == 1
    repo_id, files, kw = calls["create_commit"][0]
    assert repo_id == "me/my-aligner" and kw["commit_message"] == "first"
    assert {"model.safetensors", "config.json", "tokenizer.json", CONFIG_NAME, "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert 'StreamAligner.from_pretrained("me/my-aligner")' in card and "stream-aligner" in card
    assert json.loads(files[CONFIG_NAME])["max_correction_tokens"] == 12
    aligner.push_to_hub("me/my-aligner", revision="v1")
    assert calls["create_branch"][0][1]["branch"] == "v1"
    assert calls["create_commit"][1][2]["revision"] == "v1"


def test_stream_aligner_drives_generate(aligner, tiny_llama):
    from transformers_stream_aligner import enable_stream_alignment

    from ..helpers import assert_rewrite_exact, prompt_ids

    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    out = model.generate(prompt_ids(tok), max_new_tokens=40, do_sample=False, aligner=aligner,
                         return_dict_in_generate=True, invalid_correction="keep_original")
    assert_rewrite_exact(model, out.sequences, out.alignment_trace[0])


def test_truncated_correction_is_warned_about(tiny_llama, caplog):
    model, tok = tiny_llama
    short = StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=3))
    with caplog.at_level(logging.WARNING):
        out = short.correct(REQS[:1])
    assert len(tok(out[0], add_special_tokens=False).input_ids) <= 3
    assert "reached max_correction_tokens=3 without an EOS" in caplog.text


def test_save_pretrained_push_to_hub_and_config_push(aligner, tmp_path, monkeypatch):
    """save_pretrained(push_to_hub=True) saves and uploads in one commit (PushToHubMixin); so does the config."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(
        HfApi,
        "create_commit",
        lambda self, repo_id, operations, **kw: commits.append((repo_id, sorted(op.path_in_repo for op in operations), kw)),
    )
    aligner.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="me/pushed", commit_message="v1")
    repo_id, files, kw = commits[0]
    assert repo_id == "me/pushed" and kw["commit_message"] == "v1"
    assert {"model.safetensors", "config.json", CONFIG_NAME, "README.md", "tokenizer.json"} <= set(files)
    assert 'StreamAligner.from_pretrained("me/pushed")' in (tmp_path / "local" / "README.md").read_text()
    aligner.config.save_pretrained(tmp_path / "cfg", push_to_hub=True, repo_id="me/cfg")
    assert commits[1][:2] == ("me/cfg", [CONFIG_NAME])
    assert StreamAlignerConfig.from_pretrained(tmp_path / "cfg") == aligner.config
