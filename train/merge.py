"""Merge a LoRA adapter into its base model's weights, for serving stacks without LoRA support."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from curate.atomic import atomic_path
from curate.errors import InputError
from curate.manifest import Manifest
from curate.models import resolve_llm
from train.adapter_base import base_spec
from train.errors import TrainError
from train.lora import ADAPTER_DIR


def adapter_folder(path: str | Path) -> Path:
    """An adapter folder, or a `train lora` output folder holding one."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return path
    if (path / ADAPTER_DIR / "adapter_config.json").is_file():
        return path / ADAPTER_DIR
    raise InputError(path, "not a LoRA adapter (no adapter_config.json here or in its adapter/ folder)")


def merge_adapter(adapter: str | Path, output: str | Path, model: str | None = None) -> Path:
    """Fold the adapter into the base weights (in fp32), save in the base model's dtype with its tokenizer.

    The base model is the one the adapter records, unless `model` names another.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = adapter_folder(adapter)
    output = Path(output)
    recorded = base_spec(adapter)  # the local base this adapter was trained on (adapter_config.json has its hub id)
    resolved = resolve_llm(model or recorded)
    manifest = Manifest(command="train merge", parameters={"model": model})
    manifest.add_input(adapter)
    manifest.models.append(resolved.describe())
    try:
        base = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    except Exception as exc:
        raise TrainError(f"could not load the base model from {resolved.path}: {exc}") from None
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload().to(_stored_dtype(resolved.path))
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    with atomic_path(output) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    manifest.add_output(output)
    manifest.write(output)
    return output


def _stored_dtype(folder: Path) -> torch.dtype:
    """The dtype the base checkpoint was saved in (its config.json), so the merged one is no bigger."""
    config = json.loads((Path(folder) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, name, torch.float32)
