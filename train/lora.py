"""The LoRA training loop: a plain torch loop, validation with early stopping, resumable checkpoints.

A hand-written loop rather than HF Trainer: on a CPU every second counts, and the loop
can skip work Trainer does not, e.g. the vocabulary projection of prompt tokens, which
carry no loss. Everything that decides the result (adapter init, split, data order,
dropout) draws from the seed, so the same seed gives the same adapter.
"""

from __future__ import annotations

import json
import math
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch
import torch.nn.functional as F

from curate.atomic import atomic_path, write_text
from curate.console import console
from curate.library_log import to_log_file
from curate.manifest import Manifest, manifest_path
from curate.models import ResolvedModel, resolve_llm
from train.batches import by_length, collate, length_grouped
from train.config import MIN_ROWS, LoraTrainConfig
from train.distributed import SINGLE, World, join
from train.errors import TrainError
from train.split import stratified_split, validation_size
from train.tokenize import IGNORE, Encoded, auto_max_length, encode_all, truncate
from train.tracking import Tracker, finish

ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = Path("checkpoints") / "last"
STATE_FILE = "trainer_state.pt"
# Settings that do not change what a resumed run computes: they may differ between the runs
# (on another number of devices a step still means the same).
_RESUME_FREE = ("patience", "devices", "report_to")


@dataclass
class TrainManifest(Manifest):
    """A manifest with the run's measurements (floats and curves, which `counts` does not hold)."""

    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """The tokenized training and validation rows, and what preparing them cost."""

    train: list[Encoded]
    val: list[Encoded]
    train_ids: list[str]
    val_ids: list[str]
    max_length: int
    truncated: int
    dropped: int  # rows whose reply was cut off entirely by truncation
    flagged: int = 0  # rows curation flagged: training only, never validation (val_exclude_flagged)
    flagged_may_validate: int = 0  # flagged rows left in the split: too few unflagged rows to fill validation


@dataclass
class Progress:
    """Everything a checkpoint must carry besides weights and optimizer: where the run is and its history."""

    step: int = 0
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "epoch", "val_loss"}
    base_val_loss: float | None = None
    best_val_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    tokens: int = 0  # non-padding tokens through forward and backward
    padded_tokens: int = 0
    train_seconds: float = 0.0


@dataclass
class TrainResult:
    adapter_dir: Path
    manifest_path: Path
    best_step: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    evaluations: list[dict[str, float]]
    tokens_per_s: float


def train_lora(
    data: str | Path | pl.DataFrame,
    output_dir: str | Path,
    config: LoraTrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_evaluate: Callable[[Progress], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `data` (a file `curate.readers.read_records` reads, or a record set).

    Writes OUT/adapter (adapter, tokenizer, chat template), OUT/adapter.manifest.json,
    OUT/curves.png, OUT/split.json and, at each evaluation, OUT/checkpoints/last.
    `on_evaluate` is called after each evaluation and its checkpoint (raising in it interrupts the run).
    Started by torchrun (WORLD_SIZE > 1), each rank trains on its share of every step (`train.distributed`)
    and rank 0 alone writes.
    """
    world = join()
    trackers: list[Tracker] = []  # _train opens it once the input is checked; closed here if the run fails
    try:
        return _train(data, output_dir, config or LoraTrainConfig(), resume, progress, on_evaluate, world, trackers)
    except BaseException as exc:
        for tracker in trackers:
            tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        world.leave()


def _train(data, output_dir, config: LoraTrainConfig, resume: bool, progress: bool,
           on_evaluate: Callable[[Progress], None] | None, world: World, trackers: list[Tracker]) -> TrainResult:
    config.validate()
    output_dir = Path(output_dir)
    checkpoint = output_dir / CHECKPOINT_DIR
    if resume and not (checkpoint / STATE_FILE).is_file():
        raise TrainError(f"nothing to resume: no checkpoint in {checkpoint}")
    manifest = TrainManifest(command="train lora", parameters=config.to_dict())
    device = _device(config, world)
    records, path = _records(data)
    if path is not None:
        manifest.add_input(path)
    if records.height < MIN_ROWS:
        raise TrainError(f"{path or 'the data'}: {records.height} rows; training needs at least {MIN_ROWS} (some are held out for validation)")
    resolved = resolve_llm(config.model)
    manifest.models.append(resolved.describe())
    tokenizer = load_tokenizer(resolved)
    prepared = prepare(records, tokenizer, config, path)
    say = console.print if world.main else _silent
    if prepared.truncated:
        say(f"[yellow]warning:[/] {prepared.truncated} rows are longer than {prepared.max_length} tokens and were truncated")
    if prepared.dropped:
        say(f"[yellow]warning:[/] {prepared.dropped} rows lost their whole reply to truncation and were left out")
    if prepared.flagged:
        say(f"note: {prepared.flagged} rows flagged by curation (label_issue, label_conflict) train but are kept out of validation (--val-include-flagged to allow them)")
    if prepared.flagged_may_validate:
        say(f"[yellow]warning:[/] {prepared.flagged_may_validate} rows are flagged by curation and too few others are left to fill validation; flagged rows may be validation rows")

    model = load_model(resolved, config, device)
    forward = world.wrap(model, target_loss_sum)
    if world.distributed:
        world.seed(config.seed, 0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    batch_size, micro_batch = config.effective_batch(len(prepared.train))
    accumulation = batch_size // micro_batch
    micro_per_epoch = math.ceil(len(prepared.train) / micro_batch)
    steps_per_epoch = math.ceil(micro_per_epoch / accumulation)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, config.warmup_ratio))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    val_batches = [collate([prepared.val[i] for i in b], pad_id) for b in by_length([len(r.input_ids) for r in prepared.val], micro_batch)]

    fingerprint = _fingerprint(config, resolved, prepared)
    state = Progress()
    best_weights = _adapter_weights(model)
    if resume:
        state, best_weights = load_checkpoint(checkpoint, model, optimizer, scheduler, fingerprint, world, config.seed)
        manifest.metrics["resumed_from_step"] = state.step
    elif checkpoint.exists():
        say(f"[yellow]note:[/] starting over; the checkpoint in {checkpoint} is replaced (--resume continues it)")
    if state.base_val_loss is None:
        state.base_val_loss = validation_loss(model, val_batches, device, world)
    tracker = Tracker(output_dir, config.report_to if world.main else [], params=config.to_dict(),
                      run_name=output_dir.resolve().name, resume=resume)
    trackers.append(tracker)
    if not resume:
        tracker.log({"eval/val_loss": state.base_val_loss}, 0)
    if world.main:
        write_text(output_dir / "split.json", json.dumps({"train": prepared.train_ids, "validation": prepared.val_ids}) + "\n")
    world.barrier()

    lengths = [len(r.input_ids) for r in prepared.train]
    bar = _progress_bar(total_steps, state.step, progress and world.main)
    while state.step < total_steps and not state.stopped_early:
        epoch, done_in_epoch = divmod(state.step, steps_per_epoch)
        micro = length_grouped(lengths, micro_batch, seed=config.seed, epoch=epoch, factor=config.mega_batch_factor)
        steps = [micro[k : k + accumulation] for k in range(0, len(micro), accumulation)]
        for group in steps[done_in_epoch:]:
            t0, tokens0, lr = time.perf_counter(), state.tokens, optimizer.param_groups[0]["lr"]
            if world.distributed:
                mine = world.shard(group, micro_batch)  # no rows for this rank: a forward that counts nothing
                batches = [collate([prepared.train[i] for i in b], pad_id) for b in mine or [group[0][:1]]]
                n_targets = sum(_targets(prepared.train[i]) for b in group for i in b)
                loss = train_step(model, batches, optimizer, scheduler, config, device, state,
                                  world=world, forward=forward, n_targets=n_targets, idle=not mine)
            else:
                loss = train_step(model, [collate([prepared.train[i] for i in b], pad_id) for b in group], optimizer, scheduler, config, device, state)
            seconds = time.perf_counter() - t0
            state.train_seconds += seconds
            state.step += 1
            tracker.log({"train/loss": loss, "train/learning_rate": lr,
                         "train/tokens_per_s": (state.tokens - tokens0) / seconds if seconds else 0.0}, state.step)
            state.train_losses.append((state.step, loss))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            end_of_epoch = state.step % steps_per_epoch == 0
            due = state.step % config.eval_every == 0 if config.eval_every else end_of_epoch
            if due or state.step == total_steps:
                val = validation_loss(model, val_batches, device, world)
                if record_evaluation(state, val, steps_per_epoch, total_steps, config.patience):
                    best_weights = _adapter_weights(model)
                bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}")
                tracker.log({"eval/val_loss": val}, state.step)
                save_checkpoint(checkpoint, model, optimizer, scheduler, state, best_weights, fingerprint, world)
                if on_evaluate is not None:
                    on_evaluate(state)
                if state.stopped_early:
                    break
    bar.close()
    if state.stopped_early:
        say(f"early stop at step {state.step}: no lower validation loss in {config.patience} evaluations")

    _set_adapter_weights(model, best_weights)
    adapter_dir = output_dir / ADAPTER_DIR
    curves = output_dir / "curves.png"
    best_epoch = math.ceil(state.best_step / steps_per_epoch)
    metrics = run_metrics(state, best_epoch, device)
    if not world.main:  # rank 0 writes the outputs; the others wait until they exist
        world.barrier()
        return TrainResult(adapter_dir, manifest_path(adapter_dir), state.best_step, best_epoch, state.best_val_loss,
                           state.stopped_early, state.evaluations, metrics["tokens_per_s"])
    with atomic_path(adapter_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        from train.adapter_base import record_base  # the hub id in adapter_config.json, the local base beside it

        record_base(tmp, resolved)
    plot_curves(state, curves)
    manifest.parameters.update(max_length=prepared.max_length, device=str(device), batch_size=batch_size,
                               micro_batch_size=micro_batch, grad_accumulation=accumulation, world_size=world.size)
    manifest.counts.update(
        rows_in=records.height, train_rows=len(prepared.train), validation_rows=len(prepared.val),
        truncated_rows=prepared.truncated, dropped_rows=prepared.dropped, flagged_train_only_rows=prepared.flagged,
        steps=state.step,
        total_steps=total_steps, tokens_trained=state.tokens,
    )
    manifest.metrics.update(metrics)
    finish(tracker, state.step, {"final/best_val_loss": state.best_val_loss, "final/tokens_per_s": metrics["tokens_per_s"],
                                 "final/best_step": state.best_step})
    for out in (adapter_dir, curves, output_dir / "split.json"):
        manifest.add_output(out)
    written = manifest.write(adapter_dir)
    world.barrier()
    return TrainResult(
        adapter_dir, written, state.best_step, best_epoch, state.best_val_loss,
        state.stopped_early, state.evaluations, manifest.metrics["tokens_per_s"],
    )


def _silent(*args: Any, **kwargs: Any) -> None:
    """What ranks other than 0 print: nothing (rank 0 says it once)."""


def _targets(row: Encoded) -> int:
    """The tokens of a row that carry loss: labels after the first position (as `target_loss_sum` counts)."""
    return sum(label != IGNORE for label in row.labels[1:])


def record_evaluation(state: Progress, val: float, steps_per_epoch: int, total_steps: int, patience: int) -> bool:
    """Log a validation loss and apply early stopping; True when it is the best so far."""
    state.evaluations.append({"step": state.step, "epoch": round(state.step / steps_per_epoch, 4), "val_loss": val})
    if val < state.best_val_loss:
        state.best_val_loss, state.best_step, state.bad_evals = val, state.step, 0
        return True
    state.bad_evals += 1
    state.stopped_early = state.bad_evals >= patience and state.step < total_steps
    return False


# -- data ------------------------------------------------------------------------------


def _records(data: str | Path | pl.DataFrame) -> tuple[pl.DataFrame, Path | None]:
    if isinstance(data, pl.DataFrame):
        return data, None
    from curate.readers import read_records

    return read_records(data).records, Path(data)


def prepare(records: pl.DataFrame, tokenizer, config: LoraTrainConfig, path: Path | None = None) -> Prepared:
    """Tokenize every row, pick max_length, truncate, and hold out the validation rows."""
    encoded = encode_all(tokenizer, records["messages"].to_list(), path)
    max_length = config.max_length or auto_max_length([e.full_length for e in encoded], config.max_length_cap)
    encoded = [truncate(e, max_length) for e in encoded]
    truncated = sum(e.truncated for e in encoded)
    keep = [i for i, e in enumerate(encoded) if e.n_targets > 0]
    labels = records["label"].to_list() if "label" in records.columns else [None] * records.height
    ids = records["id"].to_list() if "id" in records.columns else [str(i) for i in range(records.height)]
    eligible, flags_kept_in = None, 0
    if config.val_exclude_flagged:
        from curate.conditions import is_flagged

        flagged = records.select(is_flagged(records).alias("f"))["f"].to_list()
        eligible = [not flagged[i] for i in keep]
        if sum(eligible) - 1 < validation_size(len(keep), config.val_fraction, config.val_size):
            flags_kept_in = eligible.count(False)  # too few unflagged rows to fill validation: the plain split
            eligible = None
    train_idx, val_idx = stratified_split(
        [labels[i] for i in keep], fraction=config.val_fraction, size=config.val_size, seed=config.seed, eligible=eligible
    )
    train = [keep[i] for i in train_idx]
    val = [keep[i] for i in val_idx]
    return Prepared(
        [encoded[i] for i in train], [encoded[i] for i in val], [ids[i] for i in train], [ids[i] for i in val],
        max_length, truncated, records.height - len(keep), 0 if eligible is None else eligible.count(False),
        flags_kept_in,
    )


# -- model -----------------------------------------------------------------------------


def _device(config: LoraTrainConfig, world: World = SINGLE) -> torch.device:
    if config.qlora and not torch.cuda.is_available():
        raise TrainError(
            "--qlora loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU, and this machine "
            "has none; leave out --qlora to train plain LoRA on the CPU"
        )
    if world.distributed:
        return world.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(resolved: ResolvedModel):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    except Exception as exc:  # a folder without tokenizer files, a broken download...
        raise TrainError(f"could not load a tokenizer from {resolved.path}: {exc}") from None
    if not tokenizer.chat_template:
        raise TrainError(f"the model in {resolved.path} has no chat template; train an instruct (chat) model")
    return tokenizer


def load_model(resolved: ResolvedModel, config: LoraTrainConfig, device: torch.device):
    """The base model with fresh LoRA layers on every target module (initialized from the seed)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # fp32 on CPU: bf16 matmuls are not faster there and lose precision; bf16 on GPU.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.qlora:
        kwargs.update(quantization_config=_bnb_config(), device_map={"": device.index or 0})
    try:
        with to_log_file(f"the base model {resolved.path}"):  # transformers' loading bar and notices
            model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    except Exception as exc:
        raise TrainError(f"could not load a causal language model from {resolved.path}: {exc}") from None
    if config.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(device)
    model.config.use_cache = False
    seed_everything(config.seed)
    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules, task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if config.init_adapter:
        _warm_start(model, Path(config.init_adapter), config, device)
    return model


def _warm_start(model, folder: Path, config: LoraTrainConfig, device: torch.device) -> None:
    """The LoRA weights of an earlier adapter in place of the fresh init (`--init-adapter`)."""
    from peft.utils import load_peft_weights

    from train.merge import adapter_folder

    folder = adapter_folder(folder)
    saved = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if int(saved.get("r", config.rank)) != config.rank:
        raise TrainError(f"--init-adapter {folder} has rank {saved.get('r')}, this run {config.rank}: give --rank {saved.get('r')}")
    try:
        _set_adapter_weights(model, load_peft_weights(str(folder), device=str(device)))
    except RuntimeError as exc:  # shapes that do not fit: another base model or other target modules
        raise TrainError(f"--init-adapter {folder} does not fit this base model: {str(exc).splitlines()[0]}") from None


def _bnb_config():
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise TrainError("--qlora needs the bitsandbytes package: pip install bitsandbytes") from None
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA


def _adapter_weights(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def _set_adapter_weights(model, weights: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise TrainError(f"adapter weights do not fit the model: {result.unexpected_keys[:3]}")


# -- loss and steps ------------------------------------------------------------------


def target_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over the target tokens.

    The vocabulary projection (a large share of a small model's compute) runs only on
    positions that carry a label; models that post-process logits (softcapping) take the
    plain forward.
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if getattr(model.config, "final_logit_softcapping", None):
        logits = model(**inputs).logits[:, :-1][keep]
    else:
        hidden = model.get_decoder()(**inputs).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum")


def train_step(model, batches: list[dict[str, torch.Tensor]], optimizer, scheduler, config: LoraTrainConfig, device, state: Progress,
               *, world: World = SINGLE, forward: Callable | None = None, n_targets: int | None = None, idle: bool = False) -> float:
    """One optimizer step over micro-batches; the loss is the mean over all target tokens of the step.

    On several ranks `batches` are this rank's share, `n_targets` counts the whole step's targets,
    and `forward` is the DDP-wrapped loss. DDP averages the ranks' gradients, so each rank's loss
    is multiplied by their number: the all-reduce then yields the gradient of the step's mean. An
    `idle` rank (a step with fewer rows than ranks) runs a forward that weighs nothing, because
    every rank must join the all-reduce.
    """
    model.train()
    if n_targets is None:
        n_targets = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
    total, tokens, padded = 0.0, 0, 0
    for n, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        if not world.distributed:
            loss = target_loss_sum(model, batch) / n_targets
            loss.backward()
        else:
            with world.syncing(last=n == len(batches) - 1):
                loss = forward(batch) / n_targets
                (loss * (0 if idle else world.size)).backward()
            if idle:
                continue
        total += loss.item()
        real = int(batch["attention_mask"].sum())
        tokens += real
        padded += batch["attention_mask"].numel() - real
    total, tokens, padded = world.sum([total, tokens, padded])
    state.tokens += int(tokens)
    state.padded_tokens += int(padded)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def validation_loss(model, batches: list[dict[str, torch.Tensor]], device, world: World = SINGLE) -> float:
    """Mean cross-entropy per target token over the whole validation set (each rank sums its share)."""
    model.eval()
    total, count = 0.0, 0
    for batch in world.part(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        total += target_loss_sum(model, batch).item()
        count += int((batch["labels"][:, 1:] != IGNORE).sum())
    total, count = world.sum([total, count])
    return total / count


def cosine_with_warmup(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warmup then cosine decay; no step runs at lr 0 (HF's schedule wastes the first one)."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return factor


# -- checkpoints -----------------------------------------------------------------------


def _fingerprint(config: LoraTrainConfig, resolved: ResolvedModel, prepared: Prepared) -> dict[str, Any]:
    settings = {k: v for k, v in config.to_dict().items() if k not in _RESUME_FREE}
    return {"config": settings, "model": str(resolved.path), "train_ids": prepared.train_ids, "val_ids": prepared.val_ids}


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: Progress, best: dict, fingerprint: dict,
                    world: World = SINGLE) -> None:
    """Adapter, optimizer, scheduler, RNG and progress, written atomically: an interrupt leaves the previous one.

    On several ranks (whose weights and optimizer states are equal) rank 0 writes, with every rank's RNG.
    """
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and not world.distributed:
        rng["cuda"] = torch.cuda.get_rng_state_all()
    payload = {
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
        "progress": state.__dict__, "best": best, "fingerprint": fingerprint,
    }
    if world.distributed:
        payload["rng_ranks"] = world.gather(world.rng_state())
    if world.main:
        with atomic_path(folder) as tmp:
            model.save_pretrained(tmp)
            torch.save(payload, tmp / STATE_FILE)
    world.barrier()


def load_checkpoint(folder: Path, model, optimizer, scheduler, fingerprint: dict, world: World = SINGLE,
                    seed: int = 0) -> tuple[Progress, dict]:
    from safetensors.torch import load_file

    if not (folder / STATE_FILE).is_file():
        raise TrainError(f"nothing to resume: no checkpoint in {folder}")
    saved = torch.load(folder / STATE_FILE, weights_only=False)
    old = saved["fingerprint"]
    changed = sorted(k for k in set(old["config"]) | set(fingerprint["config"]) if old["config"].get(k) != fingerprint["config"].get(k))
    if changed:
        raise TrainError(f"the checkpoint in {folder} was made with other settings ({', '.join(changed)}); resume with the same ones")
    if old["model"] != fingerprint["model"]:
        raise TrainError(f"the checkpoint in {folder} was made on another base model ({old['model']})")
    if old["train_ids"] != fingerprint["train_ids"] or old["val_ids"] != fingerprint["val_ids"]:
        raise TrainError(f"the checkpoint in {folder} was made on other data; resume with the same file")
    _set_adapter_weights(model, load_file(folder / "adapter_model.safetensors"))
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    random.setstate(saved["rng"]["python"])
    progress = Progress(**saved["progress"])
    ranks = saved.get("rng_ranks")
    if not world.distributed:  # rank 0's stream, when the checkpoint was made on several
        torch.set_rng_state(saved["rng"]["torch"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    elif ranks is not None and len(ranks) == world.size:
        world.set_rng_state(ranks[world.rank])
    else:  # made on another number of ranks: the step means the same, dropout draws anew
        world.seed(seed, progress.step)
    return progress, saved["best"]


# -- reporting -------------------------------------------------------------------------


def run_metrics(state: Progress, best_epoch: int, device: torch.device) -> dict[str, Any]:
    metrics = {
        "tokens_per_s": round(state.tokens / state.train_seconds, 2) if state.train_seconds else 0.0,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "best_step": state.best_step,
        "best_epoch": best_epoch,
        "best_val_loss": state.best_val_loss,
        "base_val_loss": state.base_val_loss,
        "stopped_early": state.stopped_early,
        "val_loss_per_epoch": _per_epoch(state.evaluations),
        "evaluations": state.evaluations,
        "train_loss": [{"step": s, "loss": v} for s, v in state.train_losses],
        "padding_ratio": round(state.padded_tokens / max(1, state.padded_tokens + state.tokens), 4),
        "train_seconds": round(state.train_seconds, 2),
    }
    if device.type == "cuda":
        metrics["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return metrics


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train lora", unit="step", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def _per_epoch(evaluations: list[dict[str, float]]) -> list[dict[str, float]]:
    """The last evaluation in each epoch (the only one, when evaluating once per epoch)."""
    last: dict[int, dict[str, float]] = {}
    for e in evaluations:
        last[math.ceil(e["epoch"])] = e
    return [{"epoch": k, "step": e["step"], "val_loss": e["val_loss"]} for k, e in sorted(last.items())]


def peak_rss_mib() -> float:
    """The process's peak resident memory.

    Linux: VmHWM, the peak of this process image. getrusage's ru_maxrss is not used there:
    it keeps the peak of the process that started this one (exec carries it over), so a
    `train lora` started by a large process would report that one's memory.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)  # macOS reports bytes, Linux KiB


def plot_curves(state: Progress, dest: Path) -> None:
    """Training and validation loss against the optimizer step, the best evaluation marked."""
    from curate.plots import plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    if state.train_losses:
        steps, losses = zip(*state.train_losses)
        ax.plot(steps, losses, label="train", color="#4c72b0")
    val_steps = [0] + [e["step"] for e in state.evaluations]
    val_losses = [state.base_val_loss] + [e["val_loss"] for e in state.evaluations]
    ax.plot(val_steps, val_losses, marker="o", label="validation", color="#dd8452")
    if state.best_step:
        ax.axvline(state.best_step, color="#55a868", linestyle="--", label=f"best (step {state.best_step})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.legend()
    ax.spines[["top", "right"]].set_visible(False)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
