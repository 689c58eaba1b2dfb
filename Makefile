# Two commands do everything: `make run` (install, serve) and `make test` (install, test).
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000
GATEWAY_PORT ?= 8080
GATEWAY_DIR  ?= .run/nginx
# `make run` sums metrics over its workers (without it each /metrics scrape shows one worker's counters); one
# directory per port, so several `make run PORT=...` replicas (behind `make gateway`) keep their own counters
PROMETHEUS_MULTIPROC_DIR ?= $(CURDIR)/.run/prometheus-$(PORT)
export HOST PORT
# The first of these interpreters whose version pyproject.toml's requires-python (">=A.B,<C.D") admits.
PYTHON_CANDIDATES ?= python3.11 python3.12 python3.13 python3
REQUIRES_PYTHON := $(shell sed -n 's/^requires-python = "\(.*\)"/\1/p' pyproject.toml)
PYTHON_FITS := import sys; lo, hi = (tuple(map(int, c.strip("<>= ").split("."))) for c in sys.argv[1].split(",")); \
	sys.exit(not lo <= sys.version_info[:2] < hi)
PYTHON ?= $(firstword $(foreach p,$(PYTHON_CANDIDATES),$(shell command -v $(p) >/dev/null 2>&1 && \
	$(p) -c '$(PYTHON_FITS)' '$(REQUIRES_PYTHON)' 2>/dev/null && echo $(p))))

.PHONY: install run test test-fast lint bench gateway image-base image-test k8s-validate clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || test -n "$(PYTHON)" || { echo "make: needs Python $(REQUIRES_PYTHON) (pyproject.toml requires-python);\
	 none of $(PYTHON_CANDIDATES) fits: install one, or run make PYTHON=/path/to/python" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install  ## serve in the foreground on $HOST:$PORT (behind make gateway: TRUSTED_PROXY_HOPS=1)
	mkdir -p $(PROMETHEUS_MULTIPROC_DIR)
	PROMETHEUS_MULTIPROC_DIR=$(PROMETHEUS_MULTIPROC_DIR) \
	  $(VENV)/bin/gunicorn -c deploy/gunicorn.conf.py service.wsgi:app

test: install  ## the whole suite, as CI runs it
	$(VENV)/bin/pytest

test-fast: install  ## everything but the slow live/gateway/fuzz tests
	$(VENV)/bin/pytest -m "not slow"

lint: install  ## ruff: lint rules and formatting (configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install  ## service vs bare Flask vs a naive handler under the deploy config (~8 min); BENCH_ARGS=--quick for ~2-3 min
	$(PY) -m bench $(BENCH_ARGS)

gateway: install  ## nginx on 127.0.0.1:$(GATEWAY_PORT) -> $(HOST):$(PORT), foreground (app: TRUSTED_PROXY_HOPS=1)
	GATEWAY_PORT=$(GATEWAY_PORT) GATEWAY_UPSTREAMS=$(HOST):$(PORT) \
	  $(PY) deploy/nginx/render.py --prefix-dir $(GATEWAY_DIR)/
	@echo "make gateway: API at http://127.0.0.1:$(GATEWAY_PORT)/grad/ -> $(HOST):$(PORT); run the app with" \
	  "'make run TRUSTED_PROXY_HOPS=1', or it sees every client as 127.0.0.1 and its OpenAPI servers as /" >&2
	nginx -p $(abspath $(GATEWAY_DIR))/ -c $(abspath $(GATEWAY_DIR))/nginx.conf -e stderr -g 'daemon off;'

image-base:  ## local stand-in for python:3.11-slim (debootstrap + podman import; cached)
	scripts/build-base-image.sh

image-test: install  ## build the Dockerfile offline with podman, run it, check /readyz + the tutorial neuron
	scripts/image-test.sh

k8s-validate: install  ## strict schema check of deploy/k8s
	$(VENV)/bin/kubernetes-validate --strict $(filter-out deploy/k8s/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .run
