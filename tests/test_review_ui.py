"""The Argilla web UI in a real browser: headless Chromium (Debian's package) driven by Playwright.

One server for the module (temporary workspace, free port). `curate review
push` sends 6 chat rows (2 synthetic, with vectors) and 3 text + label rows; an
annotator made with `curate review users add` signs in with the printed
password and opens each dataset from the home page:

* chat: the conversation, the response and the chat questions; filters by the
  `source` metadata value through the filter menu, edits the pre-filled
  corrected response of the record in view and submits it. `curate review
  pull` then gives that row `corrected`, with the new response. "Find similar"
  shows a chip that reads the record's turn and response;
* classification: one text and one label question with the row's label
  preselected, nothing else to answer; picking another label and submitting
  makes the row `corrected` with that label.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import annotator_page
from playwright import sync_api

from curate.records import CORE_SCHEMA, order_columns, with_ids
from curate.review.server import ReviewServer, free_port
from curate.writers import write_records

CORRECTION = "Open Settings, then Billing, and press Download invoice."


def curate(workspace: Path, *args) -> "click.testing.Result":  # noqa: F821
    from curate.cli import main

    result = CliRunner().invoke(main, ["review", *map(str, args), "--workspace", str(workspace)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    for name in ("ARGILLA_API_URL", "ARGILLA_API_KEY"):
        assert name not in os.environ, f"unset {name}: this test starts its own server"
    root = tmp_path_factory.mktemp("review-ui")
    rows = [
        {
            "messages": [{"role": "user", "content": f"Where is invoice {i}?"},
                         {"role": "assistant", "content": f"Invoice {i} is in your account."}],
            "label": "billing",
            "source": "synth:tickets" if i % 3 == 0 else "helpdesk",
            "meta": json.dumps({"n": i}),
        }
        for i in range(6)
    ]
    df = pl.DataFrame(rows, schema={k: v for k, v in CORE_SCHEMA.items() if k != "id"})
    data = write_records(order_columns(with_ids(df.with_columns(pl.lit(None, dtype=pl.String).alias("id")))),
                         root / "invoices.parquet")
    texts = [("My card was charged twice.", "billing"), ("The app crashes on start.", "technical"),
             ("Refund my last payment.", "billing")]
    labelled = pl.DataFrame([{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": label}],
                              "label": label, "source": "tickets", "meta": "{}"} for t, label in texts],
                            schema={k: v for k, v in CORE_SCHEMA.items() if k != "id"})
    tickets = write_records(order_columns(with_ids(labelled.with_columns(pl.lit(None, dtype=pl.String).alias("id")))),
                            root / "tickets.parquet")
    server = ReviewServer(workspace=root / "ws", port=free_port())
    server.start()
    try:
        curate(root / "ws", "push", data)  # with vectors: "Find similar"
        curate(root / "ws", "push", tickets, "--no-vectors")
        password = curate(root / "ws", "users", "add", "ann").stdout.strip().splitlines()[-1]
        yield {"root": root, "data": data, "tickets": tickets, "texts": dict(texts), "url": server.url,
               "password": password}
    finally:
        server.stop()


def shown_layout(page) -> tuple[list[str], list[str]]:
    """The field titles and question titles of the record in view, as the annotator reads them."""
    page.locator("[aria-label^='Question: ']").first.wait_for()
    fields = page.locator(".chat__title, .text_field_component__title-content").all_inner_texts()
    questions = page.locator("[aria-label^='Question: '] .title-area").evaluate_all(
        "els => els.map(e => e.getAttribute('aria-label'))")
    return [f.strip() for f in fields], questions


def test_annotator_filters_and_corrects_in_the_browser(pushed):
    root = pushed["root"]
    with annotator_page(pushed["url"], "ann", pushed["password"], root / "failure.png") as page:
        page.get_by_text("invoices", exact=True).click()  # the dataset card on the home page
        page.wait_for_url("**/dataset/*/annotation-mode**")
        page.get_by_text("1 of 6").wait_for()
        assert shown_layout(page) == (["Conversation", "Response"], [
            "Keep this example?", "Quality (1 bad - 5 excellent)", "Corrected response (edit in place)"])  # one class

        page.get_by_text("Filters", exact=True).click()
        page.get_by_text("Metadata", exact=True).click()
        page.get_by_text("source", exact=True).click()
        page.get_by_text("synth:tickets", exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_text("1 of 2").wait_for()  # rows 0 and 3 are synthetic
        assert "metadata=source." in page.url

        editor = page.locator("[contenteditable=true]").first
        original = editor.inner_text().strip()
        assert original in {"Invoice 0 is in your account.", "Invoice 3 is in your account."}
        n = int(original.split()[1])
        editor.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(CORRECTION)
        page.get_by_text("accept", exact=True).first.click()  # the decision is required
        page.get_by_text("Submit", exact=True).click()
        page.get_by_text("2 of 2").wait_for()  # submitted: the UI moves on to the next pending record

    out = root / "reviewed.parquet"
    result = curate(root / "ws", "pull", pushed["data"], "-o", out)
    assert "1 corrected" in result.stderr
    df = pl.read_parquet(out).with_columns(pl.col("meta").str.json_path_match("$.n").cast(pl.Int64).alias("n"))
    row = df.filter(pl.col("n") == n).row(0, named=True)
    assert row["review_outcome"] == "corrected"
    assert row["messages"][-1] == {"role": "assistant", "content": CORRECTION}
    review = json.loads(row["meta"])["review"]
    assert review["original"]["response"] == original and review["votes"][0]["user"] == "ann"
    assert df.filter(pl.col("n") != n)["review_outcome"].to_list() == ["pending"] * 5


def test_find_similar_chip_reads_the_record(pushed):
    with annotator_page(pushed["url"], "ann", pushed["password"], pushed["root"] / "chip.png") as page:
        page.get_by_text("invoices", exact=True).click()
        page.wait_for_url("**/dataset/*/annotation-mode**")
        page.get_by_text("Find similar", exact=True).first.click()
        chip = page.locator(".similarity-reference__preview__text")
        sync_api.expect(chip.first).to_have_text(re.compile(r"^Conversation: Where is invoice \d\?$"))
        sync_api.expect(chip.nth(1)).to_have_text(re.compile(r"^Response: Invoice \d is in your account\.$"))
        assert "[object Object]" not in page.locator(".similarity-reference__preview").inner_text()


def test_classification_shows_one_text_and_one_label_question(pushed):
    root = pushed["root"]
    with annotator_page(pushed["url"], "ann", pushed["password"], root / "classification.png") as page:
        page.get_by_text("tickets", exact=True).click()
        page.wait_for_url("**/dataset/*/annotation-mode**")
        page.get_by_text("1 of 3").wait_for()
        assert shown_layout(page) == (["Text"], ["Label"])
        text = next(t for t in pushed["texts"] if t in page.inner_text("body"))
        given = pushed["texts"][text]
        other = "technical" if given == "billing" else "billing"
        sync_api.expect(page.locator(f"label[for=corrected_label_{given}]")).to_have_class(re.compile("label-active"))
        sync_api.expect(page.locator(f"label[for=corrected_label_{other}]")).not_to_have_class(re.compile("label-active"))
        page.locator(f"label[for=corrected_label_{other}]").click()
        page.get_by_text("Submit", exact=True).click()
        page.get_by_text("2 of 3").wait_for()

    out = root / "tickets.reviewed.parquet"
    curate(root / "ws", "pull", pushed["tickets"], "-o", out)
    df = pl.read_parquet(out)
    row = df.filter(pl.col("messages").list.first().struct.field("content") == text).row(0, named=True)
    assert (row["review_outcome"], row["label"], row["messages"][-1]["content"]) == ("corrected", other, other)
    assert sorted(df["review_outcome"].to_list()) == ["corrected", "pending", "pending"]
