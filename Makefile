# The README's commands. `make setup` once, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test faults fuzz docs lock clean

setup:
	bash scripts/setup.sh

test:
	$(PY) -m pytest

# The fault/load suite in full (tests/faults with --long): kill -9 of the
# broker, Redis and each service in turn, the offline edge, 8 devices of load.
# `make test` runs a short version of each. Reports: out/faults/.
faults:
	mkdir -p out/faults
	FAULTS_OUT=$(CURDIR)/out/faults OMP_NUM_THREADS=1 $(PY) -m pytest tests/faults --long

# Bad input and security at length: hypothesis with 3000 examples per test,
# atheris 50000 runs per decoder, the services under hostile input, the
# security checks. `make test` runs the same tests short. Report: out/security/.
fuzz:
	mkdir -p out/security
	CLOUDTUTOR_FUZZ_EXAMPLES=3000 CLOUDTUTOR_FUZZ_REPORT=$(CURDIR)/out/security/fuzz.json CLOUDTUTOR_ATHERIS_RUNS=50000 \
		OMP_NUM_THREADS=1 $(PY) -m pytest tests/test_fuzz_decoders.py tests/test_fuzz_atheris.py tests/test_fuzz_services.py tests/test_security_*.py

docs:
	$(VENV)/bin/cloudtutor config docs

# Re-pin every Python dependency after a deliberate upgrade.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^cloudtutor' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
