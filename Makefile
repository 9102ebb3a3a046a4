# The README's test command is `make test`; .ci/run calls exactly that.
PY ?= python3
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: test deps install lint

# System and heavy test dependencies: each scripts/deps/*.sh is idempotent (skips work already done).
deps:
	@for f in scripts/deps/*.sh; do echo "== $$f"; bash $$f || exit 1; done

install:
	$(PY) -m pip install -q -e ".[test,bench]"

lint:
	$(PY) -m ruff check src tests benchmarks

test: deps install lint
	$(PY) -m pytest -q
