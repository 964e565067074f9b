# clipsearch service image: CPU-only torch, non-root, health-checked.
# The index, the images and any model weights are mounted at run time, never baked in:
#   /index   the index directory (a volume; the api reads it, the indexer writes it)
#   /images  the image collection, read-only
#   /models  model weights (.safetensors/.pt or an exported model dir), read-only
# Build:  docker build -t clipsearch .
# Run:    docker run -p 8000:8000 -v clipsearch-index:/index -v $PWD/photos:/images:ro clipsearch
FROM python:3.11-slim

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# The CPU wheel index keeps the 3 GB of CUDA libraries out of the image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /srv/clipsearch
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# Dependencies first (cached while only the code changes), then the code.
COPY pyproject.toml README.md* ./
COPY models ./models
COPY indexer ./indexer
COPY app ./app
RUN pip install . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin clipsearch \
    && mkdir -p /index /images /models \
    && chown clipsearch:clipsearch /index

USER clipsearch
ENV CLIPSEARCH_INDEX_DIR=/index \
    CLIPSEARCH_HOST=0.0.0.0 \
    CLIPSEARCH_PORT=8000
VOLUME ["/index"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["clipsearch", "serve"]
