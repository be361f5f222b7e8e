"""The `train` command: LoRA fine-tuning, evaluation and merging (commands arrive with the Train issue)."""

from __future__ import annotations

import click

from curate import __version__
from curate.console import SmallsetGroup


@click.group(cls=SmallsetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="train")
def main() -> None:
    """Fine-tune a LoRA adapter on an accepted set and compare it with the base model.

    The student is the default LLM (see `curate models`) unless --model names another.
    """


if __name__ == "__main__":
    main()
