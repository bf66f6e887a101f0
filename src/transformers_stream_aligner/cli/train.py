"""``stream-aligner train``: fine-tune a causal LM into a Stream Aligner (:func:`~..training.train_aligner`).

The flags come from three dataclasses: :class:`TrainScriptArguments` (data, model, prompt),
:class:`~..training_config.AlignerTrainingConfig` (every ``transformers.TrainingArguments`` flag, with the
reference recipe as defaults) and :class:`~..training_config.LoraArguments`. For example::

    stream-aligner train --base-model DIR --train-file records.jsonl --output-dir my-aligner \\
        --lora --lora-r 8 --learning-rate 5e-4 --push-to-hub --hub-model-id me/my-aligner

``--push-to-hub REPO`` is kept as a shorthand for ``--push-to-hub --hub-model-id REPO``, and ``--hub-private`` for
``--hub-private-repo true``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..training.config import AlignerTrainingConfig, LoraArguments
from ._dataclasses import from_namespace

__all__ = ["TrainScriptArguments", "add_parser", "normalize_argv", "run"]

_BOOL_WORDS = {"true", "false", "yes", "no", "y", "n", "1", "0"}


@dataclass
class TrainScriptArguments:
    """What to train on and from (the rest of ``stream-aligner train``'s flags are the training config's)."""

    base_model: str = field(
        metadata={"help": "Directory or Hub id of the causal LM to train (safetensors weights and a tokenizer)."}
    )
    train_file: str = field(
        metadata={
            "help": "Training records with question/prefix/last/correction: JSON or JSONL, "
            "hf://datasets/<owner>/<name>/<file>, or a data set name for `datasets`."
        }
    )
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation records (evaluated each epoch)."})
    split: str = field(default="train", metadata={"help": "Split name for a `datasets` data set."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the base model."})
    no_progress: bool = field(default=False, metadata={"help": "No progress bars (sets --disable-tqdm)."})
    aligner_config: str | None = field(
        default=None,
        metadata={"help": "A stream_aligner_config.json to train with (default: the base's own, else the reference template)."},
    )
    prompt_wrapper: str | None = field(
        default=None, metadata={"help": "Raw prompt wrapper with {instruction} instead of the tokenizer's chat template."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message when the chat template is used."})
    calculator: bool = field(
        default=False,
        metadata={"help": "The records' corrections write results as <<expression=stated>> calculations: the saved "
                  "aligner evaluates them (StreamAlignerConfig.calculator)."},
    )
    edits: str | None = field(
        default=None,
        metadata={"help": "Which edits the saved aligner may make: 'any' or 'numbers' (only numbers and calculations "
                  "may differ from the sentence; StreamAlignerConfig.edits).", "choices": ["any", "numbers"]},
    )


def add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    """The ``train`` subcommand (``subparsers`` makes ``HfArgumentParser`` s)."""
    return subparsers.add_parser(
        name,
        dataclass_types=[TrainScriptArguments, AlignerTrainingConfig, LoraArguments],
        help="train an aligner on question/prefix/last/correction records",
        description=(
            "Fine-tune a causal LM into a Stream Aligner (transformers Trainer; loss on the correction only). "
            "Defaults: the Stream Aligner reference recipe."
        ),
    )


def normalize_argv(argv: list[str]) -> list[str]:
    """The shorthands: ``--push-to-hub REPO`` -> ``--push-to-hub true --hub-model-id REPO``; ``--hub-private`` (or
    ``--hub-private-repo`` without a value) -> ``--hub-private-repo true``. The rest as given."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        is_bool = nxt is not None and nxt.lower() in _BOOL_WORDS
        if arg in ("--push-to-hub", "--push_to_hub") and nxt and not nxt.startswith("-") and not is_bool:
            out += ["--push-to-hub", "true", "--hub-model-id", nxt]
            i += 2
            continue
        if arg in ("--hub-private", "--hub-private-repo", "--hub_private_repo") and not is_bool:
            out += ["--hub-private-repo", "true"]
            i += 1
            continue
        out.append(arg)
        i += 1
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``stream-aligner train``; prints where the aligner went and what was measured."""
    from ..aligners.config import StreamAlignerConfig
    from ..training.trainer import train_aligner

    script = from_namespace(args, TrainScriptArguments)
    if args.output_dir is None:
        raise SystemExit("stream-aligner train: error: --output-dir is required (where the trained aligner is saved)")
    overrides: dict[str, Any] = {"disable_tqdm": True} if script.no_progress else {}
    config = from_namespace(args, AlignerTrainingConfig, **overrides)
    lora = from_namespace(args, LoraArguments)
    aligner_config = StreamAlignerConfig.from_json_file(script.aligner_config) if script.aligner_config else None
    prompt: dict[str, Any] = {k: v for k, v in (("prompt_wrapper", script.prompt_wrapper), ("system_prompt", script.system_prompt)) if v is not None}
    if script.calculator:
        prompt["calculator"] = True
    if script.edits is not None:
        prompt["edits"] = script.edits
    if prompt:
        base = aligner_config or StreamAlignerConfig.from_pretrained(script.base_model) or StreamAlignerConfig()
        aligner_config = dataclasses.replace(base, **prompt)
    resume: str | bool | None = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in the checkpoint directory
    result = train_aligner(
        script.base_model,
        script.train_file,
        config,
        eval_file=script.eval_file,
        aligner_config=aligner_config,
        lora_config=lora.to_peft_config(),
        trust_remote_code=script.trust_remote_code,
        resume_from_checkpoint=resume,
        data_split=script.split,
    )
    print(f"[stream-aligner] aligner saved to {result.output_dir}")
    print(f"[stream-aligner] data: {result.train_data.summary()}")
    loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
    print(
        f"[stream-aligner] {result.global_step} steps, mean training loss {loss}"
        + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
        + f"; training {result.train_runtime_s:.1f} s, total {result.total_runtime_s:.1f} s, "
        f"peak RSS {result.peak_rss_mib:.0f} MiB"
    )
    if result.commit_url:
        print(f"[stream-aligner] pushed: {result.commit_url}")
    return 0
