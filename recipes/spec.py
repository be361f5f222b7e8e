"""The recipe file: one YAML from the objective to the verdict, validated before anything runs.

A recipe names its objective first (task type, metric, target), because the metric is
chosen before any data is collected. The stage sections (`curate`, `review`, `train`,
`eval`) hold the options of the commands they run, written as in the CLI without the
dashes (`score-column: judge_score`). They are checked against those commands' own
options, so the recipe and `--help` can never disagree, and a typo fails with the key's
path before the first stage starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curate.errors import InputError
from curate.yaml_files import read_yaml

TASKS = ("classification", "exact", "free_text")
METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "exact": ("exact_match", "token_f1"),
    "free_text": ("rouge_l",),
}


def curate_steps() -> tuple[str, ...]:
    """The step names a recipe's `curate` list may use: every registered step (plugins too), and score."""
    from curate.plugins import registered

    return (*registered("steps"), "score")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Target(_Strict):
    """What counts as success: an absolute value, or points over a baseline (`over: k_shot`)."""

    value: float
    """Absolute metric value (0-1), or with `over`, the margin in points (0-100)."""
    over: Literal["base", "k_shot"] | None = None


class Objective(_Strict):
    task: Literal["classification", "exact", "free_text"]
    metric: str
    target: Target
    labels: list[str] | None = None
    """Classification: the label set, in the order the confusion matrix shows it."""

    @field_validator("target", mode="before")
    @classmethod
    def _number_is_absolute(cls, value: Any) -> Any:
        return {"value": value} if isinstance(value, (int, float)) else value

    @model_validator(mode="after")
    def _metric_fits_task(self) -> Objective:
        if self.metric not in METRICS[self.task]:
            raise ValueError(f"metric '{self.metric}' does not fit task '{self.task}'; choose one of {list(METRICS[self.task])}")
        if self.task == "classification" and not self.labels:
            raise ValueError("a classification objective lists its labels")
        return self


class RealSource(_Strict):
    """A file of real examples, read by `curate ingest` (`map` and `layout` as its options)."""

    path: Path
    map: dict[str, str] = Field(default_factory=dict)
    layout: str | None = None
    source: str | None = None


class SynthSource(_Strict):
    """Synthetic examples from a task spec (`synth generate` and its options)."""

    task: Path
    options: dict[str, Any] = Field(default_factory=dict)


class Data(_Strict):
    real: list[RealSource] = Field(default_factory=list)
    synth: SynthSource | None = None
    test: Path
    """The held-out test set, written independently of the training data: the verdict is measured on it,
    and every training row that overlaps it is removed."""

    @model_validator(mode="after")
    def _has_a_source(self) -> Data:
        if not self.real and self.synth is None:
            raise ValueError("name at least one source: `real` files or a `synth` task")
        return self


class Review(_Strict):
    """Which rows people review in Argilla, and whether the run waits for them.

    `wait: true` stops the run after the push with instructions; the next run pulls the
    decisions and goes on. `wait: false` trains now on the rows that were not routed to
    review (they passed the routing policy's confidence band) plus every decision already
    made, and picks up later decisions on the next run.
    """

    dataset: str | None = None
    """Argilla dataset name (default: the recipe's name)."""
    wait: bool = False
    push: dict[str, Any] = Field(default_factory=dict)
    """Options of `curate review push` (routing policy, score band, overlap...)."""
    workspace: Path | None = None
    """Folder of the local review server (default: RUN/review-server); ignored with ARGILLA_API_URL."""
    port: int | None = None


class RaySection(_Strict):
    """How the recipe's steps reach Ray (`executor: ray`); the same as the `--ray-*` flags."""

    address: str | None = None
    """The cluster to join (HOST:PORT, ray://HOST:10001, auto); None: RAY_ADDRESS, else a local instance per command."""
    workers: int | None = Field(default=None, ge=1)
    """Parallel tasks or actors per step (None: one per CPU of the cluster)."""


class Monitor(_Strict):
    """How `smallset run RECIPE --update NEW... --test NEW_TEST` folds a new batch in (`recipes.update`).

    The new rows are read like the first real source, checked for drift against the current training set,
    curated (the recipe's steps but `select`, unless `curate` says otherwise; always deduplicated against the
    current training set and decontaminated against every test set), reviewed as `review` says, added to the
    current training set and trained on; the candidate is promoted only when it is not worse on the earlier
    test sets (the paired interval's lower end above -tolerance) and better on the new one.
    """

    map: dict[str, str] | None = None
    """How the new files' columns map onto the record fields (default: `data.real.0.map`)."""
    layout: str | None = None
    curate: list[dict[str, dict[str, Any]]] | None = None
    """The curation steps for a new batch (default: the recipe's, without `select`)."""
    warm_start: bool = Field(default=False, alias="warm-start")
    """Train the candidate from the current adapter's weights (`train lora --init-adapter`), not from the base."""
    tolerance: float = Field(default=5.0, ge=0, le=100)
    """Points of the objective's metric the candidate may lose on an earlier test set: the lower end of the
    paired 95% interval of (candidate - current) must stay above -tolerance."""
    drift: dict[str, Any] = Field(default_factory=dict)
    """Options of `curate drift` (new rows against the current training set)."""

    @field_validator("curate", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        return None if value is None else _parse_steps(value)


def _parse_steps(value: Any) -> list[dict[str, dict[str, Any]]]:
    """`curate:` as a list of `{step: options}` (a bare step name has no options), each a known step."""
    if not isinstance(value, list):
        raise ValueError("a list of steps, e.g. `- dedup: {method: [exact, near]}`")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"step {i}: one step name mapped to its options, e.g. `- select: {{size: 40}}`")
        (step, options), = item.items()
        if step not in curate_steps():
            raise ValueError(f"step {i}: unknown step '{step}'; known: {', '.join(curate_steps())}")
        out.append({step: options or {}})
    return out


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    objective: Objective
    data: Data
    curate: list[dict[str, dict[str, Any]]] = Field(default_factory=list)
    """Ordered curation steps, each `{step: {option: value}}` with step in `curate_steps()`."""
    review: Review | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    """Options of `train lora`."""
    eval: dict[str, Any] = Field(default_factory=dict)
    """Options of `train eval`, plus two of the run's own: `curve` (options of `train curve`: a learning
    curve of the training set, whose knee `select` without a size takes) and `ablate` (curation steps
    or sources to leave out one at a time, each variant trained and scored beside the full pipeline)."""

    executor: Literal["local", "ray"] = "local"
    """Where the curate steps and the teacher run (`curate.executor`); the results, hence the stage keys, are the same."""
    ray: RaySection = Field(default_factory=RaySection)
    monitor: Monitor = Field(default_factory=Monitor)
    """What `smallset run --update` does with a new batch of data (`recipes.update`)."""

    path: Path = Field(default=Path("recipe.yaml"), exclude=True)

    @field_validator("curate", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        return _parse_steps(value)

    @model_validator(mode="after")
    def _ablations_exist(self) -> Recipe:
        known = self.ablatable()
        for i, name in enumerate(self.ablate):
            if name not in known:
                raise ValueError(f"eval.ablate.{i}: '{name}' is not a step or source of this recipe; "
                                 f"one of: {', '.join(known) or 'none'}")
        if len(set(self.ablate)) != len(self.ablate):
            raise ValueError("eval.ablate names a step twice")
        curve = self.eval.get("curve")
        if curve is not None and not isinstance(curve, dict):
            raise ValueError("eval.curve: the options of `train curve`, e.g. {sizes: '125,250,all'}")
        return self

    @property
    def ablate(self) -> list[str]:
        value = self.eval.get("ablate") or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("eval.ablate: a list of step or source names, e.g. [check-labels, synth]")
        return value

    def step_names(self) -> list[str]:
        """The curation steps' stage names, in order (a repeated step is `name-2`, `name-3`...)."""
        seen: dict[str, int] = {}
        names = []
        for step in self.curate:
            (name, _), = step.items()
            seen[name] = seen.get(name, 0) + 1
            names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
        return names

    def ablatable(self) -> list[str]:
        """What `eval.ablate` may leave out: every curation step, and a source when another remains."""
        sources = (["real"] if self.data.real and self.data.synth else []) + (["synth"] if self.data.synth else [])
        return [*self.step_names(), *sources]

    def without(self, name: str) -> Recipe:
        """This recipe with one curation step (by stage name) or one source left out (for ablations)."""
        if name == "synth":
            return self.model_copy(update={"data": self.data.model_copy(update={"synth": None})})
        if name == "real":
            return self.model_copy(update={"data": self.data.model_copy(update={"real": []})})
        steps = [step for step, stage in zip(self.curate, self.step_names()) if stage != name]
        return self.model_copy(update={"curate": steps})

    def resolve(self, relative: Path | str) -> Path:
        """A path from the recipe, relative to the recipe file's folder; absolute, so that a stage's key does not
        depend on the folder the recipe was named from (`Stage.key` writes the recipe's folder as RECIPE)."""
        p = Path(relative).expanduser()
        return Path(os.path.abspath(p if p.is_absolute() else self.path.parent / p))

    @property
    def review_dataset(self) -> str:
        return (self.review.dataset if self.review else None) or self.name


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe; every error names the file and the key's path."""
    path = Path(path)
    raw = read_yaml(path, "recipe")
    if not isinstance(raw, dict):
        raise InputError(path, "a recipe is a YAML mapping (name, objective, data, ...)")
    try:
        recipe = Recipe.model_validate({**raw, "path": path})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(path, f"{err['msg']}{more}", field=key) from None
    _check_files(recipe)
    return recipe


def _check_files(recipe: Recipe) -> None:
    files = [(f"data.real.{i}.path", s.path) for i, s in enumerate(recipe.data.real)]
    files.append(("data.test", recipe.data.test))
    if recipe.data.synth:
        files.append(("data.synth.task", recipe.data.synth.task))
    for key, rel in files:
        if not recipe.resolve(rel).exists():
            raise InputError(recipe.path, f"{recipe.resolve(rel)} does not exist", field=key)
