# The README's two commands, each setting itself up on a fresh clone (needs make and Python >= 3.11):
#   make demo    the main job on a small budget (python -m eval.pipeline), ending at its HTML report
#   make test    every test, every marker selected: what CI runs (.ci/run)
#   make quick   the fast default set, the same as `python -m pytest -q` (pyproject.toml's addopts)
# Each installs the pinned versions (pyproject.toml; qadtr/_pins.py reads them) into $(VENV) once; a second
# run reuses it and reinstalls only when pyproject.toml or this file changed. Data: --data-dir / $QADTR_DATA /
# ../shared/data beside the repository / the official download into the cache (qadtr.data.resolve_data_dir).
# A developer's own `pip install -e ".[dev]"` and `python -m pytest` are untouched: nothing here uses them.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# the interpreter the environment is made from; pyproject.toml's requires-python is checked first
PYTHON ?= python3
VENV ?= .venv
# installed first and alone: a bare `torch` requirement on a machine without torch pulls a multi-GB CUDA build
TORCH ?= torch==2.13.0
# an extra index holding the CPU build of $(TORCH), for a machine whose pip would otherwise pick a CUDA one
TORCH_INDEX ?=
# 12 committed transfer patches x 20 test images = 260 images per bit width: minutes on 2 cores
DEMO_ARGS ?= --eval-subset 20 --out runs/demo
# extra pytest arguments, e.g. make test PYTEST_ARGS="-x tests/unit"
PYTEST_ARGS ?=
# a dataset folder for the demo (empty: qadtr.data finds one, or downloads it)
DATA ?=

PY := $(VENV)/bin/python
# the extras each command installs (pyproject.toml): the main job's runtimes and plots; every test's needs
EXTRAS_demo := onnx,litert,plots
EXTRAS_test := dev,trt-check

.PHONY: demo test quick env board _demo _test _quick
.DEFAULT_GOAL := demo

# `make X` runs `_X` and ends with one line: PASSED | seconds | make X (set-up included)
demo test quick:
	@t0=$$(date +%s); rc=0; $(MAKE) --no-print-directory _$@ || rc=$$?; \
	echo "$$([ $$rc -eq 0 ] && echo PASSED || echo FAILED) | $$(( $$(date +%s) - t0 ))s | make $@"; exit $$rc

_demo: $(VENV)/.installed-demo
	$(PY) -m eval.pipeline $(DEMO_ARGS) $(if $(DATA),--data-dir "$(DATA)")
	@echo "make demo: the report is $(lastword $(DEMO_ARGS))/report/report.html (open it in a browser)"

_test: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

_quick: $(VENV)/.installed-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the test environment alone (.ci/run makes it before building the board)
env: $(VENV)/.installed-test

# the emulated ARM board's cached image (needs root for binfmt_misc; 5-9 min from scratch, then cached under
# $$QADTR_CACHE/arm-emu): tests/emu start their boards from it and skip, saying why, without it
board: $(VENV)/.installed-test
	$(PY) -m devices.arm_emu setup --profile cortex-a72
	$(PY) -m devices.arm_emu stop --profile cortex-a72

$(PY):
	@$(PYTHON) -c 'import re, sys; need = tuple(map(int, re.search(r"requires-python = \">=(\d+)\.(\d+)", \
	open("pyproject.toml").read()).groups())); sys.version_info[:2] >= need or sys.exit( \
	f"make: {sys.executable} is Python {sys.version.split()[0]}; this project needs >= {need[0]}.{need[1]}: " \
	f"rerun with PYTHON=python{need[0]}.{need[1]}")'
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "make: '$(PYTHON) -m venv' failed; install the venv" \
	"module (Debian/Ubuntu: apt-get install python3-venv) and rerun"; exit 1; }
	$(PY) -m pip install --quiet --quiet --upgrade pip

# one stamp per extras set, newer than pyproject.toml and this file once its install succeeded
$(VENV)/.installed-%: pyproject.toml Makefile | $(PY)
	@echo "make: installing $(TORCH), then .[$(EXTRAS_$*)] into $(VENV) (once)"
	$(PY) -m pip install --quiet --quiet "$(TORCH)" $(if $(TORCH_INDEX),--extra-index-url "$(TORCH_INDEX)")
	$(PY) -m pip install --quiet --quiet -e ".[$(EXTRAS_$*)]"
	@touch $@
