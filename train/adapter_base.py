"""An adapter's base model: its hub id for other machines, its local folder for this one.

peft (`PeftModel.from_pretrained`, `AutoPeftModelForCausalLM`) and the hub read the base from
`adapter_config.json`'s `base_model_name_or_path`; a smallset cache path there means nothing on
another machine. So a saved adapter names the base by its hub id where one is known (a hub spec, or
the packaged default, a dequantized copy of HuggingFaceTB/SmolLM2-135M-Instruct's Q4_1 GGUF), in
its config and model card, and `smallset-base.json` beside them keeps the local folder and how it was
resolved: smallset's own loaders (`train eval`, `train merge`, `train curve`) read that first, so
they need neither the hub nor the network.
"""

from __future__ import annotations

import json
from pathlib import Path

from curate.models import DEFAULT_LLM_HUB_ID, ResolvedModel, default_llm_folder

BASE_FILE = "smallset-base.json"


def hub_id(resolved: ResolvedModel) -> str | None:
    """The hub id of a resolved base model, where one is known."""
    if resolved.source.startswith("hub:"):
        return resolved.source.removeprefix("hub:")
    if resolved.source.startswith("default:") or (Path(resolved.path) / "smallset-conversion.json").is_file():
        return DEFAULT_LLM_HUB_ID  # the packaged default, also when given by its converted folder's path
    return None


def record_base(folder: str | Path, resolved: ResolvedModel) -> None:
    """After `save_pretrained` into `folder`: the hub id into adapter_config.json and the model card,
    the local folder into BASE_FILE (a base without a hub id keeps its path in both)."""
    folder = Path(folder)
    hub = hub_id(resolved)
    meta = {"local_path": str(resolved.path), "source": resolved.source, "hub_id": hub}
    if resolved.source.startswith("default:"):
        meta["note"] = (f"trained on smallset's packaged default, {DEFAULT_LLM_HUB_ID} dequantized from its "
                        "Q4_1 GGUF; the hub's weights are close to it, not identical")
    (folder / BASE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if hub is None:
        return
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = hub
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = folder / "README.md"
    if card.is_file():
        from huggingface_hub import ModelCard

        model_card = ModelCard.load(card)
        model_card.data.base_model = hub
        tags = model_card.data.tags or []
        model_card.data.tags = [f"base_model:adapter:{hub}" if t.startswith("base_model:adapter:") else t for t in tags]
        model_card.save(card)


def base_spec(adapter_dir: str | Path) -> str | None:
    """What `resolve_llm` should load as this adapter's base here: the local folder it was trained on while it
    exists, the packaged default (converted here if need be) for a default-trained adapter, else the recorded
    `base_model_name_or_path` (a hub id or a path; None when the adapter records none)."""
    adapter_dir = Path(adapter_dir)
    meta_file = adapter_dir / BASE_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        local = meta.get("local_path")
        if local and Path(local).is_dir():
            return local
        if str(meta.get("source", "")).startswith("default:"):
            return str(default_llm_folder())
    return json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
