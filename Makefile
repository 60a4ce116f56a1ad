# maskstudy: `make study` regenerates the study's reports, `make test` runs the tests, `make lab` opens JupyterLab.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?=
ARGS ?=
LAB_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install study test lint lab clean-reports

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,teacher]'
	touch $@

install: $(VENV)/.installed

## the whole study with the default profile (gpu with CUDA, else cpu); PROFILE=smoke|cpu|gpu, ARGS="--only 01 -p seed=1"
study: install
	$(PY) -m maskstudy run $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

## opens the text notebooks (notebooks/NN_*.py) as notebooks on double-click: jupytext's contents manager reads them,
## and .jupyter/labconfig/default_setting_overrides.json (found through JUPYTER_CONFIG_PATH) makes "Jupytext Notebook"
## the default viewer of Python files; the user's own JupyterLab settings still win
lab: install
	$(PY) -m ipykernel install --user --name maskstudy --display-name "Python (maskstudy)"
	JUPYTER_CONFIG_PATH="$(CURDIR)/.jupyter$(if $(JUPYTER_CONFIG_PATH),:$(JUPYTER_CONFIG_PATH))" $(VENV)/bin/jupyter lab notebooks/ $(LAB_ARGS)

clean-reports:
	rm -rf reports/smoke reports/cpu reports/gpu
