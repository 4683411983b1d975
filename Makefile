# mamba-mi: `make run` runs the recipe on the built-in mini corpus; `make test` runs the tests.
# Both install what they need first (tools/install.sh is idempotent: seconds when done).
RECIPE := egs2/librispeech_100/mamba_mi
PYTEST_ARGS ?=
# pytest-xdist workers: one per core, at most 4 (beyond that the tiny-recipe build, one
# worker's job, is the longest path). --dist worksteal: conftest.py puts the tests on the
# tiny recipe first, so the worker that gets them builds the recipe while the others run
# the rest, and idle workers then take recipe tests over from it.
PYTEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist worksteal

.PHONY: install run test test-fast

install:
	bash tools/install.sh

# The CTC-only model first, then everything else: stage 13 then compares both.
run: install
	cd $(RECIPE) && ./run.sh --stage 1 --stop_stage 10 --use_decoder false
	cd $(RECIPE) && ./run.sh --stage 1 --stop_stage 13 --use_decoder true

test: install
	.venv/bin/python -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: install
	.venv/bin/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow" $(PYTEST_ARGS)
