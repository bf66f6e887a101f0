"""The model card written next to a saved aligner (``README.md``), built with ``huggingface_hub``."""

from __future__ import annotations

from typing import Any

from .config import CONFIG_NAME

_TEMPLATE = """---
{card_data}
---

# {title}

A **Stream Aligner** checkpoint for [transformers-stream-aligner](https://pypi.org/project/transformers-stream-aligner/):
a small causal LM that rewrites an upstream model's answer one sentence at a time while it is being
generated (Lou et al., *Stream Aligner*, AAAI 2025, arXiv:2501.05336).

- Base model: {base_model}
- Architecture: `{architecture}`
- Prompt configuration: `{config_name}` (saved with the weights; training and inference use the same one)
- Weights: {weights}
{training}
## Prompt

Instruction template:

```text
{instruction_template}
```

Wrapper: {wrapper}
{calculator}
## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers_stream_aligner import StreamAligner, enable_stream_alignment

aligner = StreamAligner.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("your/upstream-model")
tokenizer = AutoTokenizer.from_pretrained("your/upstream-model")
enable_stream_alignment(model, tokenizer)

inputs = tokenizer.apply_chat_template(
    [{{"role": "user", "content": "What is 17*23?"}}], add_generation_prompt=True, return_tensors="pt", return_dict=True
)
out = model.generate(**inputs, aligner=aligner, max_new_tokens=200)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""


_CALCULATOR = """
Calculator: on (`calculator: true`). The aligner writes each result it checks as `<<expression=stated>>`; the
library evaluates it (`transformers_stream_aligner.aligners.calculator`): a right stated result is kept as written, a
wrong one is replaced by the value.
"""

_EDITS = """
Edits: numbers only (`edits: "numbers"`). A correction that changes more than the sentence's numbers and calculations
is a copy error: the sentence is kept (`transformers_stream_aligner.aligners.edits`).
"""


def _is_adapter(model: Any) -> bool:
    """True for a peft model or a transformers model with a loaded adapter (both save the adapter only)."""
    return hasattr(model, "peft_config")


def _training_section(facts: dict[str, Any] | None) -> str:
    if not facts:
        return ""
    rows = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    return (
        "\n## Training\n\nTrained with `stream-aligner train` (transformers `Trainer`; loss on the correction and "
        "EOS only, the prompt masked).\n\n| setting | value |\n|---|---|\n" + rows + "\n"
    )


def build_model_card(aligner: Any, repo_id: str | None = None) -> Any:
    """A ``huggingface_hub.ModelCard`` for ``aligner``: library name, tags, base model, template, usage, and the
    training recipe and data size when ``aligner.training_facts`` is set."""
    from huggingface_hub import ModelCard, ModelCardData

    config = aligner.config
    model_config = getattr(aligner.model, "config", None)
    base_model = config.base_model
    adapter = _is_adapter(aligner.model)
    tags = ["stream-aligner", "transformers-stream-aligner", "alignment", "text-generation"]
    if adapter:
        tags += ["peft", "lora"]
    data = ModelCardData(
        library_name="transformers",
        tags=tags,
        base_model=base_model,
        pipeline_tag="text-generation",
    )
    if config.prompt_wrapper is None:
        wrapper = "the tokenizer's chat template (one user turn, generation prompt added)"
    else:
        wrapper = f"raw string\n\n```text\n{config.prompt_wrapper}\n```"
    text = _TEMPLATE.format(
        card_data=data.to_yaml(),
        title=(repo_id.split("/")[-1] if repo_id else "Stream Aligner checkpoint"),
        base_model=f"`{base_model}`" if base_model else "unknown",
        architecture=(getattr(model_config, "architectures", None) or [type(aligner.model).__name__])[0],
        config_name=CONFIG_NAME,
        weights="a LoRA adapter (peft); `StreamAligner.from_pretrained` loads it onto the base model"
        if adapter
        else "full model (safetensors)",
        training=_training_section(getattr(aligner, "training_facts", None)),
        instruction_template=config.instruction_template,
        wrapper=wrapper,
        calculator=(_CALCULATOR if config.calculator else "") + (_EDITS if config.edits == "numbers" else ""),
        repo_id=repo_id or "path/to/this/checkpoint",
    )
    return ModelCard(text)
