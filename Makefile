# Two entry points a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/roost demo

# Tests need openssl, curl (interop), iproute2 and iptables (namespaces), chromium (browser
# tests), coturn (STUN peer), redis-server (shared registry) and ffmpeg (camera streams); install them
# with apt-get when missing.
system-deps:
	@missing=""; \
	for tool in openssl:openssl curl:curl ip:iproute2 iptables:iptables chromium:chromium turnutils_stunclient:coturn redis-server:redis-server ffmpeg:ffmpeg; do \
	  cmd=$${tool%%:*}; pkg=$${tool##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

test: $(STAMP) system-deps
	$(VENV)/bin/ruff format --check src tests bench tools
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/mypy --strict src
	$(VENV)/bin/pytest -q -n 3 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff format src tests bench tools
	$(VENV)/bin/ruff check --fix src tests bench tools
	$(VENV)/bin/mypy --strict src

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
