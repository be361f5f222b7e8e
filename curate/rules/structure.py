"""Structure rules: the turns are in a trainable order, and no assistant turn is empty."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from curate.rules import WHERE, Batch, Outcome, Rule
from curate.step import option

_ROLE_LETTER = {"system": "s", "user": "u", "assistant": "a"}


class RoleOrder(Rule):
    """An optional system turn first, then user and assistant alternating from user, ending with assistant."""

    reasons = {"role_order": "turns out of order: system only first, then user/assistant alternating from user, "
                             "ending with assistant"}
    order = 10

    @dataclass
    class Options:
        check_role_order: bool = option(True, "Drop rows whose turns are not [system,] user, assistant, ... ending "
                                        "with assistant.", flag="--role-order/--no-role-order")
        """Drop rows whose turns are not: an optional system turn first, then user and assistant
        alternating, starting with user and ending with assistant."""

    def enabled(self) -> bool:
        return self.config.check_role_order

    def check(self, batch: Batch) -> Outcome:
        roles_of = pl.col("messages").list.eval(pl.element().struct.field("role").fill_null("?"))
        pattern = batch.df.select(
            pl.col("messages")
            .list.eval(pl.element().struct.field("role").fill_null("?").replace_strict(_ROLE_LETTER, default="?"))
            .list.join("")
            .fill_null("")
        ).to_series()
        roles = batch.df.select(roles_of.list.join(",").fill_null("")).to_series()
        failed = ~pattern.str.contains(r"^s?(ua)+$")
        detail = pl.select(
            pl.format("roles {}: expected [system,] user, assistant[, user, assistant...]",
                      pl.when(roles == "").then(pl.lit("(none)")).otherwise(roles))
        ).to_series()
        return Outcome([("role_order", failed, detail)])


class EmptyResponse(Rule):
    """An assistant turn that is empty or only whitespace teaches the model to say nothing."""

    reasons = {"empty_response": "an assistant turn is empty or only whitespace"}
    order = 20

    @dataclass
    class Options:
        check_empty_response: bool = option(True, "Drop rows with an empty assistant turn.",
                                            flag="--empty-response/--no-empty-response")
        """Drop rows with an empty or whitespace-only assistant turn."""

    def enabled(self) -> bool:
        return self.config.check_empty_response

    def check(self, batch: Batch) -> Outcome:
        failed, detail = batch.first_per_row(batch.assistant, pl.col("content").fill_null("").str.strip_chars() == "",
                                             pl.format("empty assistant response{}", WHERE))
        return Outcome([("empty_response", failed, detail)])
