# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install demo test pytest bench clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

demo: install
	bash scripts/demo.sh

# Tests run on real services. scripts/test_services.sh installs and starts what is missing (PostgreSQL, Redis,
# Chromium, tesseract; or says exactly what to run), then runs the suite with DATABASE_URL and CELERY_BROKER_URL
# set (default: postgres://needle:needle@127.0.0.1:5432/needle, redis://127.0.0.1:6379/15).
test:
	bash scripts/test_services.sh $(MAKE) --no-print-directory pytest

# The suite alone, on services you set up yourself (DATABASE_URL and CELERY_BROKER_URL from your environment).
pytest: install
	$(PY) -m pytest

bench: install
	$(PY) bench/generation.py

clean-demo:
	rm -rf var/needle.sqlite3* var/media var/broker var/models var/demo-login.txt
