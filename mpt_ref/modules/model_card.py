"""The model card mpt-ref writes beside a saved adapter (PEFT's save_pretrained writes one too): what the
adapter is, how to load it, and the versions."""

from __future__ import annotations

from typing import Any

from mpt_ref._version import PEFT_VERSION, __version__

MODEL_CARD_NAME = "README.md"  # PEFT's save_pretrained writes a model card there too


def model_card(config: Any) -> str:
    """A short model card (PEFT writes one with ``library_name: peft``): what the adapter is and how to load it."""
    d = config.to_dict()
    peft_type = str(d.get("peft_type"))
    tags = ["peft", "mpt-ref", peft_type.lower().replace("_", "-")]
    front = ["---", "library_name: peft", "tags:"] + [f"- {t}" for t in tags]
    if d.get("base_model_name_or_path"):
        front.append(f"base_model: {d['base_model_name_or_path']}")
    front.append("---")
    listed = ("peft_type", "task_type", "num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_tasks",
             "num_ranks", "encoder_reparameterization_type", "encoder_hidden_size", "encoder_num_layers")
    fields = [f"- `{k}`: {d[k]}" for k in listed if d.get(k) is not None]
    return "\n".join(front + [
        "",
        f"# {peft_type} adapter",
        "",
        f"A PEFT prompt-learning adapter written by mpt-ref {__version__} (the NumPy reference implementation of "
        f"PEFT's prompt modules) in the format of PEFT {PEFT_VERSION}.",
        "",
        "```python",
        "from peft import PeftModel",
        "model = PeftModel.from_pretrained(base_model, \"<this directory>\")",
        "```",
        "",
        *fields,
        "",
        "### Framework versions",
        "",
        f"- PEFT {PEFT_VERSION}",
        f"- mpt-ref {__version__}",
        "",
    ])
