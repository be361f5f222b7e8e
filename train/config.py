"""Small-data LoRA defaults, each with where it comes from.

A few hundred to a few thousand examples overfit quickly, so the defaults favour
few epochs, a held-out validation set with early stopping, and adapters on every
linear layer at a modest rank.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from train.errors import TrainError

MAX_EPOCHS = 5  # beyond this a small set is memorized; the issue enforces it
MIN_ROWS = 10  # fewer rows cannot give both a training and a validation set
DEFAULT_BATCH = 16  # rows per optimizer step unless the set is small (QLoRA's effective batch)


@dataclass
class LoraTrainConfig:
    """Every knob of `train lora`; the CLI flags map onto these fields one to one."""

    model: str | None = None
    """Base model spec (`curate.models.resolve_llm`): None/"default" is the packaged SmolLM2-135M-Instruct."""

    rank: int = 16
    """LoRA r. 16 is the common small-data choice (QLoRA paper, Dettmers et al. 2023, and PEFT/TRL
    examples): with all-linear targets, higher ranks give no measurable gain on a few thousand rows."""

    alpha: int = 32
    """LoRA alpha = 2 x r, the usual scaling (update scale alpha/r = 2) in PEFT and TRL recipes."""

    dropout: float = 0.05
    """LoRA dropout; 0.05 as in the QLoRA paper for models up to 13B: a light regularizer for small sets."""

    target_modules: str | list[str] = "all-linear"
    """Adapt every linear layer but the output head: the QLoRA paper shows this is what matches full
    fine-tuning; attention-only LoRA loses quality. No modules_to_save, so vLLM can serve the adapter."""

    lr: float = 2e-4
    """Peak learning rate; 2e-4 is the QLoRA paper's value for small models and the TRL/PEFT default for LoRA."""

    warmup_ratio: float = 0.05
    """Linear warmup over this share of steps (0.03 in QLoRA, 0.1 in many TRL examples), then cosine decay to 0."""

    epochs: int = 3
    """Passes over the training set; 3 is the common SFT default, at most MAX_EPOCHS (5) to avoid memorizing."""

    batch_size: int | None = None
    """Effective batch (rows per optimizer step) = micro-batch x gradient accumulation. None = 16 (as in
    QLoRA), made smaller on small sets so that every epoch has at least `min_steps_per_epoch` optimizer
    steps (see `effective_batch`). A number given here is used as is."""

    min_steps_per_epoch: int = 8
    """Small sets: with the default batch, rows per step = min(16, max(1, train rows // this)).

    A fixed batch of 16 gives a 30-row set 2 steps per epoch, 6 in all: the adapter barely moves
    from its zero init (measured on the bundled support tickets: 6 steps left it below the k-shot
    prompt). What a LoRA update learns grows with the number of optimizer steps, not with rows per
    step, and HF/TRL recipes for small sets train for tens to hundreds of steps; 8 steps per epoch
    gives 24 in 3 epochs even on 10 rows. Sets of 128 training rows or more keep the batch of 16."""

    micro_batch_size: int = 4
    """Rows per forward pass: bounds memory; the rest of the effective batch is gradient accumulation
    (with a smaller automatic batch: the largest divisor of it up to this)."""

    max_length: int | None = None
    """Tokens per row; None = the data's 99th percentile of token lengths (rounded up to 8), capped by
    max_length_cap: one long outlier must not set the cost of every batch. Longer rows are truncated."""

    max_length_cap: int = 2048
    """Upper bound for the automatic max_length (SmolLM2 was instruction-tuned at 2048 tokens)."""

    val_fraction: float = 0.1
    """Share of rows held out for validation (stratified by label when labels exist)."""

    val_size: int | None = None
    """Exact number of validation rows; overrides val_fraction."""

    val_exclude_flagged: bool = True
    """Rows curation kept but flagged (check-labels' label_issue, dedup's label_conflict) still train but are
    never validation rows: a validation set holding suspected label errors rewards reproducing them, and on the
    evidence benchmark's noisy pool it stopped the curated set at epoch 2 of 4 (issue 14)."""

    eval_every: int | None = None
    """Evaluate every N optimizer steps; None = at the end of every epoch."""

    patience: int = 2
    """Stop after this many evaluations without a lower validation loss (the best adapter is kept)."""

    weight_decay: float = 0.0
    """AdamW weight decay; 0 as in the LoRA and QLoRA papers (the adapter is small, dropout regularizes)."""

    max_grad_norm: float = 1.0
    """Gradient clipping norm, the HF Trainer and TRL default (QLoRA used 0.3)."""

    mega_batch_factor: int = 50
    """Length grouping sorts rows by length within windows of factor x micro_batch_size rows (as HF's
    LengthGroupedSampler does): little padding, while the order stays random across windows."""

    seed: int = 42
    """Seeds the adapter's initialization, the split, the data order and dropout: same seed, same adapter."""

    qlora: bool = False
    """Load the base model in 4-bit NF4 (bitsandbytes) and train LoRA on top; needs a CUDA GPU."""

    devices: int | str = "auto"
    """Data-parallel processes, one per GPU: "auto" = every visible GPU when there are several, else 1.
    With more than one, `train lora` runs itself again under torchrun (`train.distributed`); an
    optimizer step keeps its rows (batch_size), shared out among the processes, so it means the same.
    Without a GPU, N gloo processes share the CPU: for testing, not faster."""

    init_adapter: str | None = None
    """Warm start: the LoRA weights of this adapter (a folder, or a `train lora` output) instead of a fresh init,
    e.g. last month's adapter retrained on this month's data. Its rank and target modules must be these."""

    report_to: list[str] = field(default_factory=list)
    """Experiment trackers that get the curves (`train.tracking`): tensorboard, mlflow, trackio; none by
    default. Offline: TensorBoard event files in OUT/tensorboard, an MLflow file store in OUT/mlruns, a
    run in trackio's local store (TRACKIO_DIR)."""

    def __post_init__(self) -> None:
        self.validate()

    def effective_batch(self, n_train: int) -> tuple[int, int]:
        """(rows per optimizer step, rows per forward pass) for `n_train` training rows."""
        if self.batch_size is not None:
            return self.batch_size, self.micro_batch_size
        batch = max(1, min(DEFAULT_BATCH, n_train // self.min_steps_per_epoch))
        micro = max(d for d in range(1, min(batch, self.micro_batch_size) + 1) if batch % d == 0)
        return batch, micro

    def validate(self) -> None:
        from train.tracking import parse_report_to

        self.report_to = parse_report_to(self.report_to)
        checks = [
            (1 <= self.epochs <= MAX_EPOCHS, f"epochs must be between 1 and {MAX_EPOCHS} (more epochs memorize a small set), got {self.epochs}"),
            (self.rank >= 1, f"rank must be at least 1, got {self.rank}"),
            (self.alpha >= 1, f"alpha must be at least 1, got {self.alpha}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.micro_batch_size >= 1, f"micro_batch_size must be at least 1, got {self.micro_batch_size}"),
            (
                self.batch_size is None or (self.batch_size >= self.micro_batch_size and self.batch_size % self.micro_batch_size == 0),
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})",
            ),
            (self.min_steps_per_epoch >= 1, f"min_steps_per_epoch must be at least 1, got {self.min_steps_per_epoch}"),
            (self.max_length is None or self.max_length >= 8, f"max_length must be at least 8, got {self.max_length}"),
            (self.max_length_cap >= 8, f"max_length_cap must be at least 8, got {self.max_length_cap}"),
            (0 < self.val_fraction < 0.5, f"val_fraction must be in (0, 0.5), got {self.val_fraction}"),
            (self.val_size is None or self.val_size >= 1, f"val_size must be at least 1, got {self.val_size}"),
            (self.eval_every is None or self.eval_every >= 1, f"eval_every must be at least 1, got {self.eval_every}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.mega_batch_factor >= 1, f"mega_batch_factor must be at least 1, got {self.mega_batch_factor}"),
            (self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1),
             f"devices must be 'auto' or at least 1, got {self.devices!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
