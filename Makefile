# The two commands of the README: `make demo` and `make test`. Both set up everything they need
# on a fresh machine: Debian packages for headless Qt, a virtual environment with the CPU build of
# torch, and the ISNet backbone in the model cache.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := xvfb xauth libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libxkbcommon-x11-0 \
	libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libdbus-1-3 libfontconfig1

.PHONY: demo test system-deps models clean

demo: $(VENV)/.installed models
	$(BIN)/vosembed demo --out demo-output

test: $(VENV)/.installed models
	$(BIN)/python -m pytest -q

system-deps:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-upgrade $(APT_PACKAGES); }

$(VENV)/.installed: pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "torch==2.13.0+cpu"
	$(BIN)/pip install -q -e ".[testing]"
	touch $@

models: $(VENV)/.installed
	$(BIN)/vosembed fetch-models

clean:
	rm -rf $(VENV) demo-output
