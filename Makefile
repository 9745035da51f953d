# Setup is idempotent: the venv and the install happen once (again only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
# The torch CUDA build that this platform keeps on local disk (platform.md §3); runs on the CPU too.
TORCH_PIN := torch==2.14.1
# Debian packages the project uses (grows with the recognizers): g++ builds the fused CPU scan kernel;
# the TTS engines and text sources feed `recognizers synth speech`, the handwriting fonts
# `recognizers synth math` (platform.md §13).
SYSTEM_PACKAGES := g++ espeak-ng espeak-ng-data flite festival festlex-cmu festvox-kallpc16k fortunes wamerican
SYSTEM_PACKAGES += fonts-dkg-handwriting fonts-comic-neue fonts-rufscript fonts-sjfonts fonts-breip
# More hands for `recognizers synth text` (IAM-layout writers; data/synth/hands.py, writer-htr.md §10).
SYSTEM_PACKAGES += fonts-dancingscript fonts-ecolier-court fonts-femkeklaver fonts-nanum-extra fonts-dustin
SYSTEM_PACKAGES += fonts-tlwg-purisa-ttf fonts-kristi fonts-yusei-magic fonts-kaushanscript
SYSTEM_PACKAGES += fonts-seto fonts-kiloji fonts-havana fonts-leckerli-one fonts-lobster fonts-cabinsketch
# The OCR peer of benchmarks/tesseract_compare.py (platform.md: Tesseract 5.3.0, English model).
SYSTEM_PACKAGES += tesseract-ocr tesseract-ocr-eng
# The browser tests of the web app drive Debian's chromium through Playwright (platform.md §9).
SYSTEM_PACKAGES += chromium
HOST ?= 127.0.0.1
PORT ?= 7860

export PYTHONDONTWRITEBYTECODE := 1
# albumentations asks PyPI for updates at import otherwise (platform.md §11)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: app test test-fast bench lint system-deps install fonts

# The web app with the bundled models on http://$(HOST):$(PORT) (offline; Ctrl-C stops it).
app: $(STAMP)
	$(PY) app.py --host $(HOST) --port $(PORT)

test: system-deps $(STAMP) fonts
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not e2e"

bench: $(STAMP)
	$(PY) benchmarks/scan_speed.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

install: $(STAMP)

# The extra training hands of `recognizers synth text --corpus-version 4`: pinned Fontsource fonts from
# the npm registry into ~/.cache/recognizers/fonts (data/synth/npm_fonts.py). Fetches only what is
# missing; offline, it says so and the tests that need the fonts skip (fail under CI=true).
fonts: $(STAMP)
	-$(VENV)/bin/recognizers synth fonts

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Installs missing Debian packages when root or passwordless sudo is available; otherwise says what
# is missing (tests that need it then skip, or fail under CI=true).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "system-deps: missing Debian packages:$$missing (no root or sudo to install them)"; fi; \
	fi
