# hp2p — two commands: `make demo` and `make test`. Both build .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo iot-demo chain-demo media-demo test test-heavy test-all lint bench venv clean nat-deps nat-test ui-deps media-deps

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

media-demo: $(STAMP) media-deps
	$(BIN)/python examples/media/run.py $(ARGS)

# make test: every test but the long end-to-end scenarios (under 15 minutes); make test-heavy:
# those scenarios (NAT namespaces, services end to end, ffmpeg, browser); CI runs both.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not heavy" $(PYTEST_ARGS)

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy $(PYTEST_ARGS)

test-all: test test-heavy

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

# The dashboard's browser test (tests/test_dashboard.py) runs Debian's chromium headless over the
# DevTools protocol. ui-deps installs it when missing and never fails: without it (or without
# root and apt-get) that test skips and says why.
ui-deps:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  echo "ui-deps: chromium is there"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "ui-deps: no chromium (installing it needs root and apt-get); the browser test will skip"; \
	else echo "ui-deps: installing chromium"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "ui-deps: apt-get failed; the browser test will skip"; fi

# The media tests (tests/test_media_*.py) run ffmpeg and ffprobe (Debian's ffmpeg package), and
# the viewer page's test a headless Chromium (Debian's chromium). media-deps installs what is
# missing and never fails: without them those tests skip and say why.
MEDIA_DEPS := ffmpeg:ffmpeg ffprobe:ffmpeg chromium:chromium
media-deps:
	@missing=""; for dep in $(MEDIA_DEPS); do \
	  command -v $${dep%%:*} >/dev/null 2>&1 || case " $$missing " in \
	    *" $${dep#*:} "*) ;; *) missing="$$missing $${dep#*:}";; esac; done; \
	if [ -z "$$missing" ]; then echo "media-deps: all there"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "media-deps: missing$$missing (needs root and apt-get); the media tests will skip"; \
	else echo "media-deps: installing$$missing"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null; } \
	    || echo "media-deps: apt-get failed; the media tests will skip"; fi

nat-test: $(STAMP) nat-deps
	$(BIN)/python -m pytest -q -m nat $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/hp2p bench all --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
