"""The aligner's fast decoder of an older commit against this checkout's, in ONE process (no cross-process noise).

``aligner_decoding.py`` of ``--before`` is loaded from git into the installed package under another name; both
decoders run the same request sequence (the sentences of SmolLM2's essay answer with their growing prefixes, on
the copy aligner ``make bench`` builds), passes alternating, each with a fresh decoder; outputs must be identical.

    python -m benchmarks.decoder_ab --before 3a61184
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "Write a long essay of at least twenty sentences about the history of the bicycle."


def load_decoder_of(ref: str) -> type:
    """``AlignerDecoder`` as ``ref`` wrote it (its module loaded into this package as ``_decoding_<ref>``)."""
    source = subprocess.run(["git", "show", f"{ref}:src/transformers_stream_aligner/aligner_decoding.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "aligner_decoding.py"
    path.write_text(source)
    name = f"transformers_stream_aligner._decoding_{ref}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "transformers_stream_aligner"
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.AlignerDecoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git ref whose aligner_decoding.py to compare")
    parser.add_argument("--passes", type=int, default=6)
    args = parser.parse_args()

    import torch

    from examples.smollm2 import default_cache_dir, load_smollm2
    from transformers_stream_aligner import AlignmentRequest, StreamAligner, split_sentences
    from transformers_stream_aligner.aligners.decoding import AlignerDecoder

    decoders = {"before": load_decoder_of(args.before), "after": AlignerDecoder}
    torch.manual_seed(0)
    aligner = StreamAligner.from_pretrained(default_cache_dir() / "bench-copy-aligner")
    model, tok = load_smollm2()
    enc = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)  # fmt: skip
    out = model.generate(**enc, max_new_tokens=320, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    requests, prefix = [], ""
    for sentence in (s for s in split_sentences(answer) if s.strip()):
        requests.append(AlignmentRequest(QUESTION, prefix.strip(), sentence.strip()))
        prefix += sentence
    prompts = [aligner._encode_prompt(r) for r in requests]
    sources = [aligner._source_ids(r.last) for r in requests]

    def one_pass(cls: type) -> tuple[float, list[Any]]:
        decoder = cls(aligner.model, eos_token_ids=aligner._eos_token_ids, pad_token_id=aligner._pad_token_id)
        decoder.num_draft_tokens = aligner.config.copy_draft_tokens
        start = time.perf_counter()
        with torch.no_grad():
            outputs = [decoder.generate([p], sources=[s], max_new_tokens=64)[0] for p, s in zip(prompts, sources, strict=True)]
        return time.perf_counter() - start, outputs

    times: dict[str, list[float]] = {"before": [], "after": []}
    reference = None
    for k in range(args.passes):
        for name in ("before", "after") if k % 2 == 0 else ("after", "before"):
            seconds, outputs = one_pass(decoders[name])
            reference = reference or outputs
            if outputs != reference:
                raise SystemExit("the two decoders give different outputs")
            times[name].append(seconds)
    ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
    print(f"{len(requests)} requests; seconds per pass: " + str({k: [round(x, 3) for x in v] for k, v in times.items()}))
    print(f"after / before per pass: {[round(r, 3) for r in ratios]}; median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
