"""Train an aligner on ``transformers.Trainer``: records in, a :class:`StreamAligner` checkpoint out.

The data path: records (:func:`.training_data.read_records`) are checked
(:func:`.training_data.validate_records`, errors name the record and field), tokenized with the same
prompt code inference uses and with labels ``-100`` on the prompt (:func:`.training_data.encode_records`),
padded by ``DataCollatorForSeq2Seq`` and trained by ``Trainer`` (progress bars, logging, resumable
checkpoints in ``<output_dir>-checkpoints``, multi-GPU through accelerate). The result is saved with
:meth:`StreamAligner.save_pretrained`: weights or a LoRA adapter (peft), tokenizer,
``stream_aligner_config.json`` and a model card with the recipe and data size. It is written to a
temporary directory and moved into ``output_dir`` only when everything succeeded, so a failed run
leaves ``output_dir`` as it was.

Example (command line: ``stream-aligner train --base-model DIR --train-file data.jsonl --output-dir out``,
see :mod:`.cli.train`):

    >>> from transformers_stream_aligner import AlignerTrainingConfig, StreamAligner, train_aligner
    >>> result = train_aligner("path/to/base", "records.jsonl",
    ...                        AlignerTrainingConfig(output_dir="my-aligner"))  # doctest: +SKIP
    >>> StreamAligner.from_pretrained("my-aligner")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..aligners.config import StreamAlignerConfig
from ..aligners.model import StreamAligner
from ..errors import TrainingDataError
from .config import AlignerTrainingConfig
from .data import EncodingReport, encode_records, read_records, validate_records

logger = logging.getLogger(__name__)

__all__ = ["TrainingResult", "train_aligner"]


@dataclass
class TrainingResult:
    """What :func:`train_aligner` produced and measured.

    Attributes:
        output_dir: the saved aligner checkpoint.
        base_model: what it was trained from.
        lora: the LoRA settings (``r``, ``lora_alpha``, ``target_modules``...) or ``None`` for full fine-tuning.
        train_data, eval_data: :class:`EncodingReport` of each data set (``eval_data`` ``None`` without one).
        global_step: optimizer steps taken.
        train_loss: mean training loss over the run; eval_loss: final evaluation loss (or ``None``).
        train_runtime_s: seconds inside ``Trainer.train``; total_runtime_s: the whole call.
        peak_rss_mib: peak resident memory of the process (includes everything loaded before).
        commit_url: the Hub commit when pushed.
    """

    output_dir: str
    base_model: str
    lora: dict[str, Any] | None
    train_data: EncodingReport
    eval_data: EncodingReport | None
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    train_runtime_s: float
    total_runtime_s: float
    peak_rss_mib: float
    recipe: dict[str, Any] = field(default_factory=dict)
    commit_url: str | None = None

    def card_facts(self) -> dict[str, Any]:
        """Facts for the model card's training section (see :func:`.model_card.build_model_card`)."""
        facts: dict[str, Any] = {
            "base model": self.base_model,
            "method": "LoRA (peft): " + ", ".join(f"{k}={v}" for k, v in self.lora.items())
            if self.lora
            else "full fine-tuning",
            "training records": self.train_data.records,
            "training examples": self.train_data.examples,
            "prefix shortened / dropped (too long)": f"{self.train_data.truncated} / {self.train_data.dropped}",
            "target tokens (loss)": self.train_data.target_tokens,
        }
        if self.eval_data is not None:
            facts["evaluation records"] = self.eval_data.records
        facts.update(self.recipe)
        facts["optimizer steps"] = self.global_step
        if self.train_loss is not None:
            facts["mean training loss"] = round(self.train_loss, 4)
        if self.eval_loss is not None:
            facts["final evaluation loss"] = round(self.eval_loss, 4)
        facts["training time"] = f"{self.train_runtime_s:.1f} s"
        return facts


def _recipe(config: AlignerTrainingConfig, world_size: int) -> dict[str, Any]:
    loss = {"loss": f"copy bias {config.copy_bias:g} on the copy token's logit"
            + (f" + {config.copy_bias_plain_weight:g} x plain cross-entropy" if config.copy_bias_plain_weight else "")}
    return {
        "epochs": config.num_train_epochs if config.max_steps <= 0 else f"max_steps={config.max_steps}",
        "learning rate": config.learning_rate,
        "schedule": getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type),
        "warm-up": config.warmup_steps if config.warmup_steps >= 1 else f"{config.warmup_steps:g} of the steps",
        "weight decay": config.weight_decay,
        "Adam betas": f"({config.adam_beta1}, {config.adam_beta2})",
        "batch size": f"{config.per_device_train_batch_size} per device x {config.gradient_accumulation_steps} "
        f"accumulation x {world_size} device(s)",
        "max length": config.max_length,
        "precision": "bf16" if config.bf16 else ("fp16" if config.fp16 else "float32"),
        "seed": config.seed,
        **(loss if config.copy_bias else {}),
    }


def _check_output_dir(config: AlignerTrainingConfig) -> Path:
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output_dir {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not config.overwrite_output_dir:
        raise FileExistsError(
            f"output_dir {str(out)!r} is not empty; pass overwrite_output_dir=True (--overwrite-output-dir) to "
            "replace it once training has succeeded"
        )
    return out


def _install_atomically(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` directory to ``out``; a previous ``out`` is replaced only at the end."""
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        os.replace(out, backup)
    try:
        os.replace(staging, out)
    except BaseException:
        if backup is not None:
            os.replace(backup, out)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _load_model(base_model: str, *, dtype: Any, trust_remote_code: bool) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            base_model, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise OSError(f"could not load the base model {base_model!r} (safetensors weights required): {err}") from err


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _CopyIdsCollator:
    """``DataCollatorForSeq2Seq`` for examples with ``copy_ids`` (padded with ``-100`` like the labels). Does not
    modify the examples."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        copies = [f["copy_ids"] for f in features]
        batch = self.inner([{k: v for k, v in f.items() if k != "copy_ids"} for f in features])
        width = batch["labels"].shape[1]
        batch["copy_ids"] = torch.tensor([c + [-100] * (width - len(c)) for c in copies], dtype=torch.long)
        return batch


def copy_biased_loss(
    logits: Any, labels: Any, copy_ids: Any, bias: float, num_items_in_batch: Any = None, *, plain_weight: float = 0.0
) -> Any:
    """Causal-LM cross-entropy with ``bias`` added to each position's copy-token logit (``copy_ids``, aligned with
    ``labels``; ``-100``: none), as :class:`~.aligner_decoding.CopyBiasLogitsProcessor` adds it at inference, plus
    ``plain_weight`` times the plain cross-entropy (without the bias). Summed over the target tokens and divided by
    ``num_items_in_batch`` (default: their count). Does not modify its inputs.

    >>> import torch
    >>> logits = torch.zeros(1, 3, 4)
    >>> labels, copies = torch.tensor([[-100, 2, 3]]), torch.tensor([[-100, 2, -100]])
    >>> round(copy_biased_loss(logits, labels, copies, 0.0).item(), 4), round(copy_biased_loss(logits, labels, copies, 5.0).item(), 4)
    (1.3863, 0.7032)
    """
    import torch

    logits = logits[:, :-1, :].float()
    labels, copy_ids = labels[:, 1:], copy_ids[:, 1:]
    has_copy = copy_ids >= 0
    bias_add = torch.zeros_like(logits).scatter_(-1, copy_ids.clamp(min=0).unsqueeze(-1), has_copy.unsqueeze(-1).float() * bias)
    loss = torch.nn.functional.cross_entropy(
        (logits + bias_add).reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    if plain_weight:
        loss = loss + plain_weight * torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
    count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
    return loss / count


def _copy_bias_trainer(bias: float, plain_weight: float) -> Any:
    """A ``Trainer`` subclass whose loss is :func:`copy_biased_loss` with ``bias`` and ``plain_weight``."""
    from transformers import Trainer

    class CopyBiasTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            inputs = dict(inputs)
            labels, copy_ids = inputs.pop("labels"), inputs.pop("copy_ids")
            outputs = model(**inputs)
            loss = copy_biased_loss(outputs.logits, labels, copy_ids, bias, num_items_in_batch, plain_weight=plain_weight)
            return (loss, outputs) if return_outputs else loss

    return CopyBiasTrainer


def train_aligner(
    base_model: str | os.PathLike,
    train_file: str | os.PathLike,
    config: AlignerTrainingConfig,
    *,
    eval_file: str | os.PathLike | None = None,
    aligner_config: StreamAlignerConfig | None = None,
    lora_config: Any | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: list[Any] | None = None,
    data_split: str = "train",
    eval_split: str | None = None,
) -> TrainingResult:
    """Fine-tune ``base_model`` into a Stream Aligner checkpoint in ``config.output_dir``.

    Args:
        base_model: a local directory or Hub id of a causal LM (safetensors) with its tokenizer. If it
            holds a ``stream_aligner_config.json`` (an aligner trained before), that prompt config is kept.
        train_file, eval_file: records (see :func:`.training_data.read_records` for the accepted sources).
        config: :class:`AlignerTrainingConfig` (the reference recipe by default).
        aligner_config: prompt and decoding settings saved with the result (default: the base's own, else
            the reference template with the tokenizer's chat template).
        lora_config: a ``peft.LoraConfig`` to train a LoRA adapter instead of all weights.
        dtype: dtype to load the base model in (default float32; use ``config.bf16`` for mixed precision).
        trust_remote_code: off unless you pass ``True``.
        resume_from_checkpoint: a checkpoint path, or ``True`` for the last one in ``config.trainer_output_dir``.
        callbacks: extra ``TrainerCallback`` objects.
        data_split, eval_split: split names when the data is loaded with ``datasets``.

    Returns:
        a :class:`TrainingResult`.

    Raises:
        TrainingDataError: bad or empty data (before any model is loaded or anything is written).
        FileExistsError: ``output_dir`` is not empty and ``config.overwrite_output_dir`` is off.
    """
    import torch
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, set_seed

    started = time.perf_counter()
    base_model = os.fspath(base_model)
    out = _check_output_dir(config)
    if config.push_to_hub and not config.hub_model_id:
        raise ValueError("push_to_hub needs hub_model_id (the repo to push the finished aligner to)")

    # 1. tokenizer and prompt config: everything about the data is checked before the model is loaded.
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    if aligner_config is None:
        aligner_config = StreamAlignerConfig.from_pretrained(base_model) or StreamAlignerConfig()
    if aligner_config.base_model is None:
        aligner_config = dataclasses.replace(aligner_config, base_model=base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.copy_bias and aligner_config.copy_bias != config.copy_bias:
        logger.info("the aligner is saved with copy_bias=%s, the bias it is trained with", config.copy_bias)
        aligner_config = dataclasses.replace(aligner_config, copy_bias=config.copy_bias)
    copy_targets = bool(config.copy_bias)
    train_source = os.fspath(train_file)
    train_records = validate_records(read_records(train_source, split=data_split), source=train_source, tokenizer=tokenizer)
    train_examples, train_report = encode_records(
        train_records, tokenizer, aligner_config, max_length=config.max_length, desc="Tokenizing training records",
        copy_targets=copy_targets,
    )
    if not train_examples:
        raise TrainingDataError(f"no record fits in max_length={config.max_length} tokens", source=train_source)
    eval_examples = eval_report = None
    if eval_file is not None:
        eval_source = os.fspath(eval_file)
        eval_records = validate_records(
            read_records(eval_source, split=eval_split or data_split), source=eval_source, tokenizer=tokenizer
        )
        eval_examples, eval_report = encode_records(
            eval_records, tokenizer, aligner_config, max_length=config.max_length, desc="Tokenizing evaluation records",
            copy_targets=copy_targets,
        )
    logger.info("training data: %s", train_report.summary())

    # 2. model (LoRA on top when asked); seeded so the adapter's initialisation is reproducible.
    set_seed(config.seed)
    model = _load_model(base_model, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code)
    lora_facts = None
    if lora_config is not None:
        from peft import get_peft_model

        targets = lora_config.target_modules  # as asked (peft resolves it in place to module names)
        model = get_peft_model(model, lora_config)
        lora_facts = {
            "r": lora_config.r,
            "lora_alpha": lora_config.lora_alpha,
            "lora_dropout": lora_config.lora_dropout,
            "target_modules": targets if isinstance(targets, str) or targets is None else sorted(targets),
        }

    # 3. Trainer: checkpoints in their own directory, never pushed (the finished aligner is).
    trainer_args = dataclasses.replace(config, output_dir=config.trainer_output_dir, push_to_hub=False)
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
    trainer_class = Trainer
    if copy_targets:  # copy_ids ride beside the labels (the stock column filter would drop them)
        trainer_args = dataclasses.replace(trainer_args, remove_unused_columns=False)
        collator, trainer_class = _CopyIdsCollator(collator), _copy_bias_trainer(config.copy_bias, config.copy_bias_plain_weight)
    if eval_examples is not None and getattr(trainer_args.eval_strategy, "value", trainer_args.eval_strategy) == "no":
        trainer_args = dataclasses.replace(trainer_args, eval_strategy="epoch")
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        trainer = trainer_class(
            model=model,
            args=trainer_args,
            train_dataset=train_examples,
            eval_dataset=eval_examples,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        train_output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        eval_loss = trainer.evaluate()["eval_loss"] if eval_examples else None
    finally:
        tokenizer.padding_side = padding_side
    model = trainer.model
    model.eval()

    # 4. save into a staging directory next to output_dir, then move it into place.
    result = TrainingResult(
        output_dir=str(out),
        base_model=base_model,
        lora=lora_facts,
        train_data=train_report,
        eval_data=eval_report,
        global_step=train_output.global_step,
        train_loss=train_output.training_loss,
        eval_loss=eval_loss,
        train_runtime_s=float(train_output.metrics.get("train_runtime", 0.0)),
        total_runtime_s=0.0,
        peak_rss_mib=_peak_rss_mib(),
        recipe=_recipe(config, trainer.args.world_size),
    )
    aligner = StreamAligner(model, tokenizer, aligner_config)
    aligner.training_facts = result.card_facts()
    if trainer.is_world_process_zero():
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            aligner.save_pretrained(staging)
            _install_atomically(staging, out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        if config.push_to_hub:
            commit = aligner.push_to_hub(
                config.hub_model_id, private=config.hub_private_repo, token=config.hub_token
            )
            result.commit_url = getattr(commit, "commit_url", None)
        if not config.keep_checkpoints and Path(config.trainer_output_dir).is_dir():
            shutil.rmtree(config.trainer_output_dir, ignore_errors=True)
    result.total_runtime_s = time.perf_counter() - started
    return result
