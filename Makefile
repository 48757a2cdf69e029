# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install, run the demo
#   make test   - create .venv, install, run the tests
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a plain `torch` requirement could pull a CUDA build of several GB.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install clean

$(VENV)/.installed: setup.py pyproject.toml requirements-dev.txt $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.inc)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m engine demo

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info engine/_C*.so
