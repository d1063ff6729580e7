# hp2p — two commands: `make demo` and `make test`. Both build .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo iot-demo chain-demo test lint bench venv clean nat-deps nat-test

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hp2p needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,webrtc]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/hp2p demo $(ARGS)

iot-demo: $(STAMP)
	$(BIN)/python examples/iot/run.py $(ARGS)

chain-demo: $(STAMP)
	$(BIN)/python examples/chain/run.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

# The NAT tests (tests/test_nat_*.py, marker nat) build network namespaces behind Linux NATs:
# they need root, iproute2, nftables (or iptables) and coturn. nat-deps installs what is
# missing (apt-get update once, then install) and never fails: without the tools, or
# without root, those tests skip and say why.
NAT_DEPS := ip:iproute2 nft:nftables iptables:iptables turnserver:coturn
nat-deps:
	@missing=""; for dep in $(NAT_DEPS); do \
	  command -v $${dep%%:*} >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; done; \
	if [ -z "$$missing" ]; then echo "nat-deps: all there"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "nat-deps: missing$$missing (needs root and apt-get); the NAT tests will skip"; \
	else echo "nat-deps: installing$$missing"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "nat-deps: apt-get failed; the NAT tests will skip"; fi

nat-test: $(STAMP) nat-deps
	$(BIN)/python -m pytest -q -m nat $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/hp2p bench all --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
