"""LoRA training throughput: `train lora` against TRL's SFTTrainer (with peft) on the same data.

    python benchmarks/train.py                       # CPU-sized: 48 rows, 1 epoch
    python benchmarks/train.py --rows 512 --epochs 3 # a longer run (on a GPU, say)
    python benchmarks/train.py --matched             # TRL with our lr, batch and schedule too

Both contenders train the same base model (default: the packaged SmolLM2-135M-Instruct)
with the same LoRA configuration (r=16, alpha=32, dropout 0.05, all linear layers) for
the same number of epochs, on the same training rows, and are scored on the same
held-out validation rows: `train lora` picks the split, and TRL trains on its training
rows. Each contender runs in its own child process (one after the other, never side by
side), so that each one's peak RSS is its own.

TRL runs at its defaults (`SFTConfig()`): batch 8, lr 2e-5 with linear decay, gradient
checkpointing, loss on every token of the conversation, random batches padded to the
longest row. On a CPU `bf16=False` is the one setting changed (TRL's default refuses to
start without bf16 hardware). `--matched` also gives TRL our learning rate, effective
batch, warmup and cosine schedule, to separate the speed of the loop from the effect of
the settings on the validation loss.

Measured, for each contender:
  tokens/s       train tokens/s: non-padding training tokens (rows x epochs) per second of
                 training: ours, the optimizer steps (`train_seconds` in the manifest);
                 TRL, `trainer.train()` from its first to its last callback (its defaults
                 evaluate nothing, so there is nothing to leave out)
  e2e tokens/s   the same tokens per second of the whole call: model load, tokenization,
                 the loop, and whatever the trainer does besides (ours: a validation pass
                 before training and per epoch, checkpoints, the adapter and curves)
  peak RSS       the child process's peak resident memory (peak VRAM too on a GPU)
  val loss       mean cross-entropy per reply token on the validation rows, computed the
                 same way for both (`train.lora.validation_loss`) on the final adapter
  MFU (CUDA)     6 x parameters x tokens/s over the GPU's dense bf16 peak (PaLM's
                 convention, which counts a full fine-tune's FLOPs; attention FLOPs left out)

Target on a CPU: ours >= 1.5x TRL's tokens/s with a validation loss no worse.

Data: synthetic chats of very different lengths (a list of 2 to 30 colored items to
restate in order), so that padding and batching choices show.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `train` CLI sets it; both children inherit it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_RATIO = 1.5
COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "grey"]
THINGS = ["ball", "cup", "hat", "box", "pen", "lamp", "shoe", "book", "kite", "door"]
# Dense bf16 peak FLOP/s by GPU name (vendor data sheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12, "RTX 4090": 165e12}


def make_rows(n: int, seed: int) -> list[dict]:
    """Chats whose lengths vary about 10x: restate a list of 2 to 30 colored things."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = int(rng.integers(2, 31))
        items = [f"{COLORS[rng.integers(10)]} {THINGS[rng.integers(10)]}" for _ in range(k)]
        user = f"Request {i}: list these {k} things one per line, numbered: " + ", ".join(items) + "."
        reply = "\n".join(f"{j + 1}. A {item}." for j, item in enumerate(items))
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
                     "label": None})
    return rows


def ours(data: str, out: str, args: dict, queue) -> None:
    from train.config import LoraTrainConfig
    from train.lora import peak_rss_mib, train_lora

    import torch

    config = LoraTrainConfig(epochs=args["epochs"], val_size=args["val_size"], seed=args["seed"], model=args["model"])
    start = time.perf_counter()
    result = train_lora(data, out, config, progress=False)
    seconds = time.perf_counter() - start
    manifest = json.loads(Path(result.manifest_path).read_text())
    m, p = manifest["metrics"], manifest["parameters"]
    queue.put({
        "tokens": manifest["counts"]["tokens_trained"], "seconds": seconds, "loop_seconds": m["train_seconds"],
        "val_loss": m["evaluations"][-1]["val_loss"], "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "padding": m["padding_ratio"], "steps": manifest["counts"]["steps"],
        "settings": f"lr {config.lr}, batch {p['batch_size']} ({p['micro_batch_size']} x {p['grad_accumulation']}), "
                    f"cosine, max_length {p['max_length']}",
    })


def trl(data: str, out: str, split: dict, args: dict, queue) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer
    from transformers import TrainerCallback

    from curate.models import resolve_llm
    from curate.readers import read_records
    from train.batches import by_length, collate
    from train.config import LoraTrainConfig
    from train.lora import load_tokenizer, peak_rss_mib, validation_loss
    from train.tokenize import encode

    ref = LoraTrainConfig(epochs=args["epochs"], seed=args["seed"], model=args["model"])
    resolved = resolve_llm(ref.model)
    records = read_records(data).records
    by_id = dict(zip(records["id"].to_list(), records["messages"].to_list()))
    train_set = Dataset.from_list([{"messages": by_id[i]} for i in split["train"]])
    settings = {"output_dir": out, "num_train_epochs": args["epochs"], "seed": args["seed"], "report_to": [],
                "save_strategy": "no", "disable_tqdm": True}
    if not torch.cuda.is_available():
        settings["bf16"] = False  # TRL's default (bf16) refuses to start on a CPU
    if args["matched"]:
        batch, micro = ref.effective_batch(len(split["train"]))
        settings.update(learning_rate=ref.lr, per_device_train_batch_size=micro,
                        gradient_accumulation_steps=batch // micro, lr_scheduler_type="cosine",
                        warmup_ratio=ref.warmup_ratio, max_grad_norm=ref.max_grad_norm)
    peft_config = LoraConfig(r=ref.rank, lora_alpha=ref.alpha, lora_dropout=ref.dropout,
                             target_modules=ref.target_modules, task_type="CAUSAL_LM")

    class LoopClock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.start

    clock = LoopClock()
    start = time.perf_counter()
    config = SFTConfig(**settings)
    trainer = SFTTrainer(model=str(resolved.path), args=config, train_dataset=train_set, peft_config=peft_config,
                         callbacks=[clock])
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * args["epochs"]

    tokenizer = load_tokenizer(resolved)
    val = [encode(tokenizer, by_id[i], max_length=config.max_length) for i in split["validation"]]
    pad = tokenizer.pad_token_id
    batches = [collate([val[i] for i in b], pad) for b in by_length([len(v.input_ids) for v in val], 4)]
    device = next(trainer.model.parameters()).device
    queue.put({
        "tokens": tokens, "seconds": seconds, "loop_seconds": clock.seconds,
        "val_loss": validation_loss(trainer.model, batches, device), "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "padding": None, "steps": trainer.state.global_step,
        "settings": f"lr {config.learning_rate}, batch {config.per_device_train_batch_size} x {config.gradient_accumulation_steps}, "
                    f"{config.lr_scheduler_type.value}, gradient checkpointing {config.gradient_checkpointing}, "
                    f"max_length {config.max_length}" + (" (matched)" if args["matched"] else " (defaults)"),
    })


def in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()  # before join: a large result would block the child's exit
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"{target.__name__} failed with exit code {proc.exitcode}")
    return result


def model_info(model: str | None) -> tuple[int, str | None, float | None]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from curate.models import resolve_llm

    path = resolve_llm(model).path
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).parameters())
    if not torch.cuda.is_available():
        return params, None, None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return params, name, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=48, help="rows in the data set (validation rows included)")
    parser.add_argument("--val-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default=None, help="base model (default: the packaged SmolLM2-135M-Instruct)")
    parser.add_argument("--matched", action="store_true", help="give TRL our lr, batch, warmup and schedule")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = vars(parser.parse_args())

    from rich.console import Console
    from rich.table import Table

    params, gpu, peak = model_info(args["model"])
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = Path(tmp) / "chats.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args["rows"], args["seed"])))
        results = {"train lora": in_child(ours, str(data), str(Path(tmp) / "ours"), args)}
        split = json.loads((Path(tmp) / "ours" / "split.json").read_text())
        results["TRL SFTTrainer"] = in_child(trl, str(data), str(Path(tmp) / "trl"), split, args)

    table = Table(title=f"LoRA training, {args['rows']} rows ({args['val_size']} for validation), {args['epochs']} epoch(s), "
                        f"{'GPU ' + gpu if gpu else 'CPU'}")
    for column in ("contender", "tokens", "steps", "tokens/s", "e2e tokens/s", "peak RSS MiB", "val loss"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    if gpu:
        table.add_column("peak VRAM MiB", justify="right")
        table.add_column("MFU", justify="right")
    for name, r in results.items():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["loop_tokens_per_s"] = r["tokens"] / r["loop_seconds"]
        cells = [name, str(r["tokens"]), str(r["steps"]), f"{r['loop_tokens_per_s']:.1f}", f"{r['tokens_per_s']:.1f}",
                 f"{r['peak_rss_mib']:.0f}", f"{r['val_loss']:.4f}"]
        if gpu:
            r["mfu"] = 6 * params * r["loop_tokens_per_s"] / peak if peak else None
            cells += [f"{r['peak_gpu_mib']:.0f}", f"{r['mfu']:.2%}" if r["mfu"] is not None else "unknown GPU peak"]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    for name, r in results.items():
        console.print(f"  {name}: {r['settings']}")
    a, b = results["train lora"], results["TRL SFTTrainer"]
    ratio = a["loop_tokens_per_s"] / b["loop_tokens_per_s"]
    e2e_ratio = a["tokens_per_s"] / b["tokens_per_s"]
    no_worse = a["val_loss"] <= b["val_loss"]
    passed = ratio >= TARGET_RATIO and no_worse
    console.print(f"train tokens/s ratio (train lora / TRL): {ratio:.2f}x ({e2e_ratio:.2f}x end to end); "
                  f"validation loss {a['val_loss']:.4f} vs {b['val_loss']:.4f} ({'no worse' if no_worse else 'worse'}); "
                  f"target >= {TARGET_RATIO}x with a loss no worse: {'[green]PASS[/]' if passed else '[red]FAIL[/]'}")
    if args["json"]:
        args["json"].write_text(json.dumps({"args": args, "results": results, "ratio": ratio, "e2e_ratio": e2e_ratio,
                                            "passed": passed, "gpu": gpu, "params": params}, indent=2, default=str) + "\n")

if __name__ == "__main__":
    main()
