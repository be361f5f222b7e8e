"""The Argilla dataset's settings for a layout, and how an existing dataset is reused.

A new dataset gets one of two layouts (see `mapping.row_layouts`):

* classification: the field `text` and one label question, `corrected_label`
  ("Label"), preselected with the row's own label; accept/reject
  (`decision`) only when asked for (`ask_decision`), or when there are fewer
  than two classes to choose from. Discard rejects;
* chat: the fields `prompt` (the conversation) and `response`, and the
  questions `decision` (accept / reject, required), `rating` (1-5),
  `corrected_response` (text) and, when the chat rows carry two labels or more,
  `corrected_label`;

and for both: metadata properties for every filterable column (see
`mapping.py`), a vector field `embedding` when vectors are pushed, and the task
distribution (a record is complete after `overlap` submissions). The guidelines
are written from the questions themselves, under the titles the UI shows.

Argilla lets a published dataset gain metadata properties and vector fields
and change its distribution, but not its fields or questions. So reusing a
dataset keeps its layout (a dataset with a `text` field is a classification
one), adds what is missing where it can, and reports the rest (a field that is
gone is not sent; a missing question gets no suggestion) instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from curate.review.mapping import (
    ACCEPT,
    CHAT,
    CLASSIFICATION,
    CORRECTED_LABEL,
    CORRECTED_RESPONSE,
    DECISION,
    PROMPT,
    RATING,
    RATINGS,
    REJECT,
    RESPONSE,
    TEXT,
    VECTOR,
    MetadataColumn,
)

if TYPE_CHECKING:
    import argilla as rg

FIXED_METADATA = (MetadataColumn("dataset", "terms"), MetadataColumn("source", "terms"), MetadataColumn("origin", "terms"))
VECTOR_TITLE = "Meaning (sentence embedding)"

# What the UI shows for each question, and what the guidelines (and the question's own tooltip) say about it.
TITLES = {
    DECISION: "Keep this example?",
    RATING: "Quality (1 bad - 5 excellent)",
    CORRECTED_RESPONSE: "Corrected response (edit in place)",
    CORRECTED_LABEL: "Label",
}
HELP = {
    (CHAT, DECISION): "*accept* if the example is correct and worth training on as it stands (or once you corrected "
                      "it below); *reject* if it is wrong, harmful or useless.",
    (CLASSIFICATION, DECISION): "*accept* if the text is worth training on with the label you leave selected; "
                                "*reject* if it is not.",
    (CHAT, RATING): "overall quality of the response, 1 (bad) to 5 (excellent).",
    (CHAT, CORRECTED_RESPONSE): "it holds the response: edit it in place to fix it, leave it as it is otherwise.",
    (CHAT, CORRECTED_LABEL): "the judge's class (else the row's own) is selected: pick the right class when it is "
                             "wrong.",
    (CLASSIFICATION, CORRECTED_LABEL): "the row's label is selected: keep it when it is right, pick the right class "
                                       "when it is not, then Submit.",
}
READ = {CHAT: "Read the conversation and the response, then answer:",
        CLASSIFICATION: "Read the text and check its label:"}
ENDING = {
    CHAT: "**Discard** (the button) counts as a rejection.\n\n"
          "Suggestions (marked as such) come from an automatic judge or are the row as it is: check them, do not "
          "trust them.",
    CLASSIFICATION: "**Discard** (the button) drops the example: no class fits, or the text is not a useful example. "
                    "**Submit** keeps it with the selected label.\n\n"
                    "Metadata: `label_issue` true marks a row whose label the label checker doubts, `label_suggested` "
                    "is the class it predicts, and the suggestion's score is the probability it gives the row's own "
                    "label. Check them, do not trust them.",
}


def guidelines(layout: str, questions: list[str]) -> str:
    """The guidelines of a layout, naming each of its questions by the title the UI shows."""
    lines = [READ[layout], ""]
    lines += [f"* **{TITLES[q]}**: {HELP[layout, q]}" for q in questions]
    return "\n".join([*lines, "", ENDING[layout], ""])


@dataclass(frozen=True)
class TaskShape:
    """What the dataset needs: its layout, classes, filterable columns, vector size and overlap."""

    layout: str = CHAT
    labels: tuple[str, ...] = ()
    metadata: tuple[MetadataColumn, ...] = ()
    vector_dims: int | None = None
    overlap: int | None = None  # None: a new dataset gets 1, an existing one keeps its own
    ask_decision: bool = False  # classification: ask accept/reject besides the label

    @property
    def correctable_labels(self) -> bool:
        """A label question needs two classes at least (Argilla refuses one option, and so would sense)."""
        return len(self.labels) >= 2

    def fields(self) -> tuple[str, ...]:
        return (TEXT,) if self.layout == CLASSIFICATION else (PROMPT, RESPONSE)

    def questions(self) -> list[str]:
        """The layout's questions, in the order the UI shows them."""
        label = [CORRECTED_LABEL] if self.correctable_labels else []
        if self.layout == CLASSIFICATION:
            decision = [DECISION] if self.ask_decision or not label else []
            return [*label, *decision]
        return [DECISION, RATING, CORRECTED_RESPONSE, *label]

    def all_metadata(self) -> list[MetadataColumn]:
        extra = [MetadataColumn("label", "terms")] if self.labels else []
        return [*FIXED_METADATA, *extra, *self.metadata]


def layout_of(settings: "rg.Settings") -> str:
    """An existing dataset's layout: classification when it has the `text` field, else chat."""
    return CLASSIFICATION if TEXT in {f.name for f in settings.fields} else CHAT


def _metadata_property(column: MetadataColumn) -> "rg.MetadataProperty":
    import argilla as rg

    if column.kind == "integer":
        return rg.IntegerMetadataProperty(name=column.name)
    if column.kind == "float":
        return rg.FloatMetadataProperty(name=column.name)
    return rg.TermsMetadataProperty(name=column.name)


def _question(name: str, shape: TaskShape) -> "rg.QuestionType":
    import argilla as rg

    title, description = TITLES[name], HELP[shape.layout, name]
    if name == DECISION:
        return rg.LabelQuestion(name=name, title=title, description=description, labels=[ACCEPT, REJECT], required=True)
    if name == RATING:
        return rg.RatingQuestion(name=name, title=title, description=description, values=list(RATINGS), required=False)
    if name == CORRECTED_RESPONSE:
        return rg.TextQuestion(name=name, title=title, description=description, required=False)
    return rg.LabelQuestion(name=name, title=title, description=description, labels=list(shape.labels),
                            required=shape.layout == CLASSIFICATION)


def build_settings(shape: TaskShape) -> "rg.Settings":
    """Settings for a new Argilla dataset."""
    import argilla as rg

    if shape.layout == CLASSIFICATION:
        fields = [rg.TextField(name=TEXT, title="Text", required=True)]
    else:
        fields = [rg.ChatField(name=PROMPT, title="Conversation", required=False),
                  rg.TextField(name=RESPONSE, title="Response", required=True)]
    questions = shape.questions()
    vectors = ([rg.VectorField(name=VECTOR, title=VECTOR_TITLE, dimensions=shape.vector_dims)]
               if shape.vector_dims else [])
    return rg.Settings(
        guidelines=guidelines(shape.layout, questions),
        fields=fields,
        questions=[_question(name, shape) for name in questions],
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
    for name in shape.fields():
        if name not in out.fields:
            out.notes.append(f"the Argilla dataset has no field {name!r}: it is not sent")
    for name in shape.questions():
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

            settings.vectors.add(rg.VectorField(name=VECTOR, title=VECTOR_TITLE, dimensions=shape.vector_dims))
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
