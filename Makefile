# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOGS   ?= logs

# A tiny offline sweep, run for each technique: two tiny models x two learning rates x two batch sizes,
# six languages (16 runs with system metrics; about two minutes on 2 idle cores).
DEMO_TRAIN := --model-names tiny-bert tiny-bert-wide --eval-datasets-names en de fr es ar zh \
	--num-train-samples 300 --num-train-epochs 5 --eval-steps 10 --learning-rate 1e-3 3e-3 --batch-size 8 16 \
	--output-dir $(LOGS) --quiet

.PHONY: install demo test lint check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins torch to the CPU wheel and every other package to a tested version
	$(PY) -m pip install -q -c constraints.txt -e '.[train,test]'
	touch $(STAMP)

install: $(STAMP)

# trained once; delete $(LOGS) to train again (interrupted, it goes on where it stopped: finished runs are skipped)
$(LOGS)/.trained: | $(STAMP)
	$(PY) -m training fine-tune $(DEMO_TRAIN)
	$(PY) -m training feature-extraction $(DEMO_TRAIN)
	touch $@

demo: $(LOGS)/.trained
	$(VENV)/bin/syncer backfill --mlflow-tracking-uri $(LOGS)/mlruns --aim-repo $(LOGS)
	@$(VENV)/bin/syncer status --aim-repo $(LOGS) --aim
	@echo
	@echo "Look at them in Aim's UI:   $(VENV)/bin/aim up --repo $(LOGS)    (then open http://127.0.0.1:43800)"

# Services the tests need, installed with apt-get when missing and we are root (otherwise a note,
# and the tests that need them skip with that reason): Chromium for the screenshot tests in
# tests/test_ui*.py, PostgreSQL for the PostgreSQL store tests (the tests start their own server).
.PHONY: test-deps
test-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$missing for the tests"; \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing) >/dev/null \
			|| echo "note: could not install$$missing; the tests that need them will skip"; \
	else \
		echo "note: not installed:$$missing (as root: apt-get install$$missing); the tests that need them will skip"; \
	fi

# The one gate, on the whole repo (`make test` runs it first; .pre-commit-config.yaml runs the same):
# ruff lint (complexity limit included) and format check on all four folders, mypy --strict on syncer/.
LINTED := syncer training tests bench
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

# The quick loop (under a minute): the gate, then the pure unit tests (tests/unit/).
check: lint
	$(PY) -m pytest -q tests/unit

# two workers, one test file each at a time (a file's tests share its fixtures: a trained sweep, servers)
test: install test-deps lint
	$(PY) -m pytest -q -n 3 --dist loadfile

clean:
	rm -rf $(LOGS) .pytest_cache
