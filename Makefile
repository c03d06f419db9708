# The README's two commands: `make demo` and `make test`. Each does the whole set-up first.
SHELL := /bin/bash
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= osmesa
VENV := .venv
SEED ?= 0

.PHONY: setup demo test lint pytest colcon-check bench clean

setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/sym-mbrl up pendulum --seed $(SEED) $(if $(RUN),--out $(RUN))

lint: setup
	$(VENV)/bin/ruff check src test bench launch

pytest: setup
	$(VENV)/bin/python -m pytest -q

colcon-check: setup
	@scripts/check_colcon.sh

test: lint pytest colcon-check

clean:
	rm -rf build install log .pytest_cache .ruff_cache src/*.egg-info
