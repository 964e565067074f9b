# One virtual environment in .venv/; every target sets it up first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FLICKR := ../shared/data/flickr8k
DEMO_PHOTOS := runs/demo-photos
# The 1,000 Flickr8k val photos (never trained on) when ../shared has them; else the public-domain
# photos scikit-image ships (a fresh clone). Or any folder: make demo DEMO_IMAGES=~/Pictures
DEMO_IMAGES ?= $(DEMO_PHOTOS)
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
define DEMO_PHOTOS_PY
import csv, pathlib, shutil, sys
flickr, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
if (flickr / "captions.csv").is_file():
    rows = csv.DictReader(open(flickr / "captions.csv"))
    val = sorted({r["filepath"] for r in rows if r["split"] == "val"})
    for name in val:
        link = dst / pathlib.Path(name).name
        if not link.exists():
            link.symlink_to((flickr / name).resolve())
    print(f"indexing the {len(val)} Flickr8k val photos (never seen in training) from {flickr}")
else:
    import skimage
    src = pathlib.Path(skimage.__file__).parent / "data"
    for p in sorted(src.glob("*")):
        if p.suffix in (".png", ".jpg"):
            shutil.copy(p, dst)
    print(f"{flickr} not found: indexing the sample photos scikit-image ships instead")
endef
export DEMO_PHOTOS_PY

demo: setup
ifeq ($(DEMO_IMAGES),$(DEMO_PHOTOS))
	@$(PY) -c "$$DEMO_PHOTOS_PY" $(FLICKR) $(DEMO_PHOTOS)
endif
	$(CLI) index $(DEMO_IMAGES) --index $(DEMO_INDEX)
	$(CLI) info --index $(DEMO_INDEX)
	$(CLI) search "dog" --index $(DEMO_INDEX) -k 5
	$(CLI) search "children playing in the water" --index $(DEMO_INDEX) -k 5
	$(CLI) search '"a cat" + "on a sofa" - 0.5:"text"' --index $(DEMO_INDEX) -k 3

serve: setup
	$(CLI) serve --index $(DEMO_INDEX)
