# Entry points: make run | make demo | make test | make lint | make bench | make bench-scale | make screenshots
# Each installs what it needs into .venv first (idempotent; re-runs when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# tests/browser drive Debian's chromium through Playwright (which cannot download
# browsers offline). Root installs it directly, anyone else through sudo.
CHROMIUM    := /usr/bin/chromium
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: install browser run demo test test-unit lint format bench bench-scale screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	# The CPU build of torch first, so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# llama-cpp-python compiles llama.cpp (~6 min the first time; pip caches the wheel).
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Only `make test` needs a browser (and Redis and haproxy for tests/scale);
# `make run` and `make lint` never install them.
browser:
	@test -x $(CHROMIUM) || { \
	  echo "Installing chromium for tests/browser (apt-get)"; \
	  $(APT_INSTALL) chromium >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update -qq && $(APT_INSTALL) chromium >/dev/null; }; \
	}
	@command -v espeak-ng >/dev/null || $(APT_INSTALL) espeak-ng >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update -qq && $(APT_INSTALL) espeak-ng >/dev/null; }
	@# tests/scale: a real Redis and a real load balancer in front of three replicas.
	@test -x /usr/bin/redis-server && test -x /usr/sbin/haproxy || { \
	  echo "Installing redis-server and haproxy for tests/scale (apt-get)"; \
	  $(APT_INSTALL) redis-server haproxy >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update -qq && $(APT_INSTALL) redis-server haproxy >/dev/null; }; \
	}

ACTIVATE_HINT := echo "The enclave and openai commands are in $(VENV)/bin: in another shell, run 'source $(VENV)/bin/activate' first."

run: install
	@$(ACTIVATE_HINT)
	$(BIN)/enclave serve

# The hr-assistant example, self-contained: the mock HR API on 127.0.0.1:8090 and the
# server with the example's config (apps may send HR_TOKEN; loopback allowed), which
# both get HR_TOKEN. Ctrl-C stops both.
HR_TOKEN ?= demo-hr-token
DEMO_PORT ?= 8080
demo: install
	@$(ACTIVATE_HINT)
	@export HR_TOKEN='$(HR_TOKEN)'; \
	$(BIN)/python examples/hr-assistant/mock_hr_api.py --port 8090 & hr=$$!; \
	trap 'kill $$hr 2>/dev/null' EXIT INT TERM; \
	$(BIN)/enclave serve --port $(DEMO_PORT) --config examples/hr-assistant/enclave.yaml

test: install browser
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix src tests bench examples
	$(BIN)/ruff format src tests bench examples

bench: install
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/knowledge.py

# Replicas behind haproxy (needs redis-server and haproxy, which `browser` installs).
bench-scale: install browser
	$(BIN)/python bench/scale.py

# Screenshots: the browser tests write build/screenshots/ (ignored by git, so `make test`
# leaves the tree clean); this copies them over the ones docs/ui.md shows.
screenshots: install browser
	$(BIN)/pytest tests/browser -q $(PYTEST_ARGS)
	cp build/screenshots/*.png docs/ui/

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
