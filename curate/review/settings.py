"""The Argilla dataset's settings for a task, and how an existing dataset is reused.

A new dataset gets:

* fields `prompt` (chat), `response` (text) and, for classification, `label`;
* questions `decision` (accept / reject, required), `rating` (1-5),
  `corrected_response` (text) and, for classification with two classes or
  more, `corrected_label`;
* metadata properties for every filterable column (see `mapping.py`);
* a vector field `embedding` when vectors are pushed;
* the task distribution: a record is complete after `overlap` submissions.

Argilla lets a published dataset gain metadata properties and vector fields
and change its distribution, but not its fields or questions. So reusing a
dataset adds what is missing where it can, and reports the rest (a field that
is gone is not sent; a missing question gets no suggestion) instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from curate.review.mapping import (
    ACCEPT,
    CORRECTED_LABEL,
    CORRECTED_RESPONSE,
    DECISION,
    LABEL,
    PROMPT,
    RATING,
    RATINGS,
    REJECT,
    RESPONSE,
    VECTOR,
    MetadataColumn,
)

if TYPE_CHECKING:
    import argilla as rg

FIXED_METADATA = (MetadataColumn("dataset", "terms"), MetadataColumn("source", "terms"), MetadataColumn("origin", "terms"))

GUIDELINES = """\
Read the prompt and the response.

* **decision**: *accept* if the example is correct and worth training on as it stands
  (or once you corrected it below); *reject* if it is wrong, harmful or useless.
  *Discard* (the button) counts as a rejection.
* **rating**: overall quality, 1 (bad) to 5 (excellent).
* **corrected_response**: edit the response in place to fix it; leave it as it is otherwise.
* **corrected_label** (classification): the right class, when the given one is wrong.

Suggestions (marked as such) come from an automatic judge: check them, do not trust them.
"""


@dataclass(frozen=True)
class TaskShape:
    """What the dataset needs: its classes, filterable columns, vector size and overlap."""

    labels: tuple[str, ...] = ()
    metadata: tuple[MetadataColumn, ...] = ()
    vector_dims: int | None = None
    overlap: int | None = None  # None: a new dataset gets 1, an existing one keeps its own

    @property
    def correctable_labels(self) -> bool:
        """A corrected-label question needs two classes at least (Argilla refuses one option, and so would sense)."""
        return len(self.labels) >= 2

    def all_metadata(self) -> list[MetadataColumn]:
        extra = [MetadataColumn("label", "terms")] if self.labels else []
        return [*FIXED_METADATA, *extra, *self.metadata]


def _metadata_property(column: MetadataColumn) -> "rg.MetadataProperty":
    import argilla as rg

    if column.kind == "integer":
        return rg.IntegerMetadataProperty(name=column.name)
    if column.kind == "float":
        return rg.FloatMetadataProperty(name=column.name)
    return rg.TermsMetadataProperty(name=column.name)


def build_settings(shape: TaskShape) -> "rg.Settings":
    """Settings for a new Argilla dataset."""
    import argilla as rg

    fields = [
        rg.ChatField(name=PROMPT, title="Prompt", required=False),
        rg.TextField(name=RESPONSE, title="Response", required=True),
    ]
    questions = [
        rg.LabelQuestion(name=DECISION, title="Keep this example?", labels=[ACCEPT, REJECT], required=True),
        rg.RatingQuestion(name=RATING, title="Quality (1 bad - 5 excellent)", values=list(RATINGS), required=False),
        rg.TextQuestion(name=CORRECTED_RESPONSE, title="Corrected response (edit in place)", required=False),
    ]
    if shape.labels:
        fields.append(rg.TextField(name=LABEL, title="Label", required=False))
    if shape.correctable_labels:
        questions.append(
            rg.LabelQuestion(name=CORRECTED_LABEL, title="Correct label", labels=list(shape.labels), required=False)
        )
    vectors = [rg.VectorField(name=VECTOR, dimensions=shape.vector_dims)] if shape.vector_dims else []
    return rg.Settings(
        guidelines=GUIDELINES,
        fields=fields,
        questions=questions,
        metadata=[_metadata_property(c) for c in shape.all_metadata()],
        vectors=vectors,
        distribution=rg.TaskDistribution(min_submitted=shape.overlap or 1),
        allow_extra_metadata=False,
    )


@dataclass
class Reconciled:
    """What an existing dataset offers, what push changed in it, and what it could not."""

    fields: set[str] = field(default_factory=set)
    questions: set[str] = field(default_factory=set)
    metadata: set[str] = field(default_factory=set)
    vectors: bool = False
    labels: tuple[str, ...] = ()
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def reconcile(dataset: "rg.Dataset", shape: TaskShape) -> Reconciled:
    """Bring an existing dataset as close to `shape` as Argilla allows; say what differs."""
    settings = dataset.settings
    out = Reconciled(
        fields={f.name for f in settings.fields},
        questions={q.name for q in settings.questions},
        metadata={m.name for m in settings.metadata},
    )
    for name in (PROMPT, RESPONSE) + ((LABEL,) if shape.labels else ()):
        if name not in out.fields:
            out.notes.append(f"the Argilla dataset has no field {name!r}: it is not sent")
    for name in (DECISION, RATING, CORRECTED_RESPONSE) + ((CORRECTED_LABEL,) if shape.correctable_labels else ()):
        if name not in out.questions:
            out.notes.append(f"the Argilla dataset has no question {name!r}: no suggestion for it")
    if CORRECTED_LABEL in out.questions:
        question = settings.questions[CORRECTED_LABEL]
        out.labels = tuple(getattr(question, "labels", None) or ())
        missing = [label for label in shape.labels if label not in out.labels]
        if missing:
            out.notes.append(
                f"the question {CORRECTED_LABEL!r} lacks the labels {missing} (Argilla does not add labels to a "
                "published question): annotators cannot pick them"
            )

    changes = False
    for column in shape.all_metadata():
        if column.name not in out.metadata:
            settings.metadata.add(_metadata_property(column))
            out.metadata.add(column.name)
            out.changed.append(f"added the metadata property {column.name!r}")
            changes = True
    vector_names = {v.name: v for v in settings.vectors}
    if shape.vector_dims:
        existing = vector_names.get(VECTOR)
        if existing is None:
            import argilla as rg

            settings.vectors.add(rg.VectorField(name=VECTOR, dimensions=shape.vector_dims))
            out.changed.append(f"added the vector field {VECTOR!r} ({shape.vector_dims} dimensions)")
            out.vectors = changes = True
        elif existing.dimensions != shape.vector_dims:
            out.notes.append(
                f"the vector field {VECTOR!r} has {existing.dimensions} dimensions, the embedder gives "
                f"{shape.vector_dims}: no vectors are sent"
            )
        else:
            out.vectors = True
    current = getattr(settings.distribution, "min_submitted", None)
    if shape.overlap is not None and current != shape.overlap:
        import argilla as rg

        settings.distribution = rg.TaskDistribution(min_submitted=shape.overlap)
        out.changed.append(f"task distribution: min_submitted {current} -> {shape.overlap}")
        changes = True
    if changes:
        dataset.update()
    return out
