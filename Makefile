VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-fast install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The embedded demo: tiny CLIP, generated data, local Ray, no network.
demo: $(VENV)/.installed
	$(PY) jobs/run_benchmark.py

# The whole suite, slow end-to-end tests through Ray included.
test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf results .pytest_cache
