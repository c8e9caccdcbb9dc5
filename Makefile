# The README's commands. `make setup` once, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test docs lock clean

setup:
	bash scripts/setup.sh

test:
	$(PY) -m pytest

docs:
	$(VENV)/bin/cloudtutor config docs

# Re-pin every Python dependency after a deliberate upgrade.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^cloudtutor' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
