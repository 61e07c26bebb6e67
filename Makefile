# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins torch to the CPU wheel and every other package to a tested version
	$(PY) -m pip install -q -c constraints.txt -e '.[train,test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf logs .pytest_cache
