# One virtual environment in .venv/; every target sets it up first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FLICKR_IMAGES := ../shared/data/flickr8k/images
SAMPLE_IMAGES := runs/demo-samples
# Flickr8k when ../shared has it; else the public-domain photos scikit-image ships (a fresh clone).
DEMO_IMAGES ?= $(if $(wildcard $(FLICKR_IMAGES)),$(FLICKR_IMAGES),$(SAMPLE_IMAGES))
DEMO_INDEX ?= runs/demo-index
CLI := $(VENV)/bin/clipsearch

.PHONY: setup browser test lint format demo serve

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the pair that works here (the CPU-only 2.13.0 cannot import torchvision).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The browser tests drive Debian's chromium (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium not found: browser tests skip (CI=true makes them fail)"; fi; }

test: lint browser
	$(PY) -m pytest -q

# The main job on its offline default: index a photo folder with the shipped model, then search it.
demo: setup
ifeq ($(DEMO_IMAGES),$(SAMPLE_IMAGES))
	@echo "$(FLICKR_IMAGES) not found: indexing the sample photos scikit-image ships instead"
	$(PY) -c "import pathlib, shutil, skimage; \
	  src = pathlib.Path(skimage.__file__).parent / 'data'; dst = pathlib.Path('$(SAMPLE_IMAGES)'); \
	  dst.mkdir(parents=True, exist_ok=True); \
	  [shutil.copy(p, dst) for p in sorted(src.glob('*')) if p.suffix in ('.png', '.jpg')]"
	$(CLI) index $(DEMO_IMAGES) --index $(DEMO_INDEX)
	$(CLI) info --index $(DEMO_INDEX)
	$(CLI) search "a cat" --index $(DEMO_INDEX) -k 3
	$(CLI) search '"a rocket" + "the sky" - 0.5:"text"' --index $(DEMO_INDEX) -k 3
else
	$(CLI) index $(DEMO_IMAGES) --index $(DEMO_INDEX)
	$(CLI) info --index $(DEMO_INDEX)
	$(CLI) search "a dog running through the grass" --index $(DEMO_INDEX) -k 5
	$(CLI) search '"children playing" + "in the water" - 0.5:"adults"' --index $(DEMO_INDEX) -k 5
endif

serve: setup
	$(CLI) serve --index $(DEMO_INDEX)
