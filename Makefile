# Two commands do everything: `make run` (install, serve) and `make test` (install, test).
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000
GATEWAY_PORT ?= 8080
export HOST PORT

.PHONY: install run test test-fast bench gateway image-base image-test k8s-validate clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install  ## serve in the foreground on $HOST:$PORT
	$(VENV)/bin/gunicorn -c deploy/gunicorn.conf.py service.wsgi:app

test: install  ## the whole suite, as CI runs it
	$(VENV)/bin/pytest

test-fast: install  ## everything but the slow live/gateway/fuzz tests
	$(VENV)/bin/pytest -m "not slow"

bench: install  ## service vs bare Flask vs a naive handler under the deploy config (~8 min); BENCH_ARGS=--quick for ~1 min
	$(PY) -m bench $(BENCH_ARGS)

gateway: install  ## nginx gateway on 127.0.0.1:$(GATEWAY_PORT) -> $(HOST):$(PORT), foreground
	GATEWAY_PORT=$(GATEWAY_PORT) GATEWAY_UPSTREAMS=$(HOST):$(PORT) $(PY) deploy/nginx/render.py --prefix-dir .run/nginx/
	nginx -p $(CURDIR)/.run/nginx/ -c $(CURDIR)/.run/nginx/nginx.conf -e stderr -g 'daemon off;'

image-base:  ## local stand-in for python:3.11-slim (debootstrap + podman import; cached)
	scripts/build-base-image.sh

image-test: install  ## build the Dockerfile offline with podman, run it, check /readyz + the tutorial neuron
	scripts/image-test.sh

k8s-validate: install  ## strict schema check of deploy/k8s
	$(VENV)/bin/kubernetes-validate --strict $(filter-out deploy/k8s/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .run
