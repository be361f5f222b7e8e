"""Recipes: one YAML file from the objective to the verdict, and the runner that executes it.

`spec` reads and validates a recipe, `stages` turns it into commands of `curate`, `synth`
and `train` (the one place that knows all three), `runner` executes them with caching and
resume, `review_stage` hands rows to people in Argilla, `update` folds a new batch of data in as
the next version of the adapter (promoted only when it is better), and `report` writes the run report.
The bundled recipes sit beside this file; their data is in `examples/` and `tasks/`.
"""
