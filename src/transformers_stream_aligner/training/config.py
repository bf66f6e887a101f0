"""`AlignerTrainingConfig`: ``transformers.TrainingArguments`` with the Stream Aligner reference recipe as defaults.

Defaults (the reference recipe): 3 epochs, learning rate 2e-5, cosine schedule, warm-up over the
first 3% of steps, no weight decay, Adam betas (0.9, 0.95), seed 42, at most 4096 tokens per
example, 8 examples per device. Everything else is ``TrainingArguments`` as you know it (``bf16``,
``gradient_accumulation_steps``, ``save_steps``, ``eval_strategy``, ``report_to``...).

``output_dir`` is where the finished aligner checkpoint goes. ``Trainer``'s own checkpoints (optimizer
state, for resuming) go to ``checkpoint_dir``, by default ``<output_dir>-checkpoints``, so that a run
that fails leaves nothing in ``output_dir``.

``push_to_hub`` / ``hub_model_id`` / ``hub_private_repo`` / ``hub_token`` push the finished aligner in
one commit (:meth:`StreamAligner.push_to_hub`); the intermediate checkpoints are never pushed.

Example:

    >>> from transformers_stream_aligner import AlignerTrainingConfig
    >>> config = AlignerTrainingConfig(output_dir="my-aligner")
    >>> (config.num_train_epochs, config.learning_rate, config.lr_scheduler_type.value, config.adam_beta2)
    (3.0, 2e-05, 'cosine', 0.95)
    >>> config.trainer_output_dir
    'my-aligner-checkpoints'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

__all__ = ["AlignerTrainingConfig", "LoraArguments"]


@dataclass
class AlignerTrainingConfig(TrainingArguments):
    """Training settings of an aligner (see the module docstring for the defaults).

    Args (beyond ``TrainingArguments``):
        max_length: longest example in tokens; longer records lose leading prefix sentences.
        checkpoint_dir: where ``Trainer`` saves resumable checkpoints (default ``<output_dir>-checkpoints``).
        keep_checkpoints: keep ``checkpoint_dir`` after a successful run (default: removed).
        overwrite_output_dir: replace an existing, non-empty ``output_dir`` (it is swapped in only after
            training succeeded).
        copy_bias: train with the copy bias the aligner runs with (``StreamAlignerConfig.copy_bias``): the loss
            sees the logit of each target position's *copy token* (the token of the sentence being corrected that
            continues copying it, as :class:`~.aligner_decoding.CopyTracker` finds it at inference) raised by this
            much, so the model learns only where and how to depart from the sentence. The saved aligner runs with
            the same bias. ``0`` (default): plain cross-entropy.
        copy_bias_plain_weight: with ``copy_bias``, also this much of the plain cross-entropy (no bias): the model
            still has to read the sentence itself, which it needs to compute what replaces a wrong part.
    """

    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs (reference: 3)."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate (reference: 2e-5)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Schedule (reference: cosine)."})
    warmup_steps: float = field(
        default=0.03,
        metadata={"help": "Warm-up: steps, or a ratio of all steps when < 1 (reference: 0.03).", "aliases": ["--warmup-ratio"]},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay (reference: 0)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1 (reference: 0.9)."})
    adam_beta2: float = field(default=0.95, metadata={"help": "Adam beta2 (reference: 0.95)."})
    seed: int = field(default=42, metadata={"help": "Random seed (reference: 42)."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every this many steps."})
    max_length: int = field(default=4096, metadata={"help": "Longest example in tokens (reference: 4096)."})
    checkpoint_dir: str | None = field(
        default=None, metadata={"help": "Trainer checkpoints (default: <output_dir>-checkpoints)."}
    )
    copy_bias: float = field(
        default=0.0, metadata={"help": "Train (and save the aligner) with this copy bias on the copy token's logit (0: off)."}
    )
    copy_bias_plain_weight: float = field(
        default=0.0, metadata={"help": "With --copy-bias: weight of the plain (unbiased) loss added to the biased one."}
    )
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep checkpoint_dir after success."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a non-empty output_dir (only once training has succeeded)."}
    )

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise ValueError("AlignerTrainingConfig needs output_dir (where the trained aligner is saved)")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if not 0 <= self.copy_bias < float("inf"):
            raise ValueError(f"copy_bias must be a finite number >= 0, got {self.copy_bias}")
        if not 0 <= self.copy_bias_plain_weight < float("inf"):
            raise ValueError(f"copy_bias_plain_weight must be a finite number >= 0, got {self.copy_bias_plain_weight}")
        super().__post_init__()

    @property
    def trainer_output_dir(self) -> str:
        """Directory for ``Trainer``'s checkpoints (``checkpoint_dir`` or ``<output_dir>-checkpoints``)."""
        return self.checkpoint_dir or self.output_dir.rstrip("/\\") + "-checkpoints"


@dataclass
class LoraArguments:
    """Whether and how to train a LoRA adapter (peft) instead of all weights (``stream-aligner train --lora``).

    Example:

        >>> LoraArguments(lora=True, lora_r=8).to_peft_config().r
        8
        >>> LoraArguments().to_peft_config() is None
        True
    """

    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA layers."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names, or 'all-linear'."}
    )

    def to_peft_config(self) -> Any:
        """A ``peft.LoraConfig`` for a causal LM, or ``None`` when ``lora`` is off (needs ``peft``)."""
        if not self.lora:
            return None
        from peft import LoraConfig

        targets = self.lora_target_modules
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
            task_type="CAUSAL_LM",
        )
