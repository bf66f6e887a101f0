"""Copies: a model patched by ``enable_stream_alignment`` keeps the patch through ``copy.deepcopy``, ``pickle`` and
``torch.save``, and every copy generates with its own weights."""

import copy
import inspect
import io
import json
import pickle

import pytest
import torch

from transformers_stream_aligner import StreamAlignedGenerationMixin, enable_stream_alignment

from ..helpers import prompt_ids
from ..tiny_models import cached_tiny


def indeed(question, prefix, last):
    return "Indeed, " + last


def _torch_round_trip(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save": _torch_round_trip,
}


@pytest.fixture
def patched():
    base, tok = cached_tiny("llama")
    model = enable_stream_alignment(copy.deepcopy(base), tok)  # a private copy: the session's model stays as it is
    return model, tok


@pytest.mark.parametrize("how", sorted(COPIES))
def test_copies_keep_the_patch_and_use_their_own_weights(patched, how):
    model, tok = patched
    ids = prompt_ids(tok)
    plain = model.generate(ids, max_new_tokens=30, do_sample=False)
    aligned = model.generate(ids, max_new_tokens=30, do_sample=False, aligner=indeed)
    clone = COPIES[how](model)
    assert type(clone) is type(model) and isinstance(clone, StreamAlignedGenerationMixin)
    assert torch.equal(clone.generate(ids, max_new_tokens=30, do_sample=False), plain)
    assert torch.equal(clone.generate(ids, max_new_tokens=30, do_sample=False, aligner=indeed), aligned)
    with torch.no_grad():  # the copy's own weights: change them and its output changes, the original's does not
        for p in clone.parameters():
            p.mul_(0.5)
    assert not torch.equal(clone.generate(ids, max_new_tokens=30, do_sample=False), plain)
    assert torch.equal(model.generate(ids, max_new_tokens=30, do_sample=False), plain)
    assert enable_stream_alignment(clone) is clone  # enabling again is harmless


def test_patched_model_keeps_its_name_and_generate_signature(patched, tmp_path):
    model, tok = patched
    base, _ = cached_tiny("llama")
    assert type(model).__name__ == type(base).__name__ and isinstance(model, type(base))
    # the stock signature, as functools.wraps gives it (tools and pipelines read it); aligner= goes through **kwargs
    assert inspect.signature(model.generate) == inspect.signature(base.generate)
    assert list(inspect.signature(model.generate).parameters)[0] == "inputs" and "aligner" in model.generate.__doc__
    assert type(enable_stream_alignment(copy.deepcopy(base))) is type(model)  # one class per model class
    model.save_pretrained(tmp_path)  # the saved checkpoint names the model's own class
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [type(base).__name__]
