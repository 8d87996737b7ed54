# ferpipe: two commands a user needs (see README).
#   make repro   set up the environment, then `dvc repro` the whole pipeline on the embedded default
#   make test    set up the environment, then run the test suite (what CI runs)
# Both reuse an existing .venv: it is rebuilt only when pyproject.toml changes.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ferpipe-installed

# Offline machines: telemetry must not try to phone home.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: venv repro test test-fast bench clean-venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	# Their metadata pins torch<2.3 / numpy<2 / opencv-python; they work beside current versions.
	$(BIN)/pip install --quiet --no-deps facenet-pytorch==2.6.0 insightface==2.1
	@touch $(STAMP)

# dvc runs each stage's cmd (`ferpipe <stage>`) in a shell: put the venv first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	python -m pytest -m 'not slow' $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# tests/test_ui_browser.py drives Debian's chromium + chromium-driver with Selenium (nothing downloads a
# browser). Installed only when missing, as root with apt-get; otherwise a message, and that test skips
# (it fails under CI=true).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "browser: chromium and chromedriver are installed"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "browser: chromium/chromedriver missing and not installable here (needs root and apt-get);" \
		     "install Debian's chromium and chromium-driver, or tests/test_ui_browser.py is skipped"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver; \
	fi
