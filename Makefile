# Two commands do everything: `make run` (install, serve) and `make test` (install, test).
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HOST PORT

.PHONY: install run test test-fast bench image-test clean

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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .run
