# Gradient service image: gunicorn + Flask + CPU-only torch, running as a non-root user, ready for a
# read-only root filesystem (only /tmp needs to be writable).
#
# Python packages come either from an index or from a pre-built wheelhouse in .run/wheelhouse/:
#   registry build (PyPI's Linux torch wheel is the CUDA build, so point pip at an index with CPU wheels):
#     docker build --build-arg PIP_EXTRA_INDEX_URL=<index with CPU torch wheels> -t gradsvc .
#   offline build (what scripts/image-test.sh does; no network inside the build):
#     podman build --pull=never --network none --format docker --build-arg PIP_NO_INDEX=1 -t gradsvc .
#   (both with --build-arg VERSION=<pyproject.toml's version>, see the label below)

# Three stages: `build` installs the dependencies into /opt/venv and prunes what the service never loads
# (scripts/prune-venv.sh prints each item and its size); `runtime` is the slim base with a user and without
# docs, translations and the package manager's caches; the final image is `runtime`'s files plus the venv in
# one FROM-scratch layer, so nothing deleted in a later step still ships in an earlier layer.
# python:3.11 (the full image) builds, for its strip(1); its Python is the same build as the slim image's.
FROM python:3.11 AS build
# pip reads these from the environment: PIP_NO_INDEX=1 installs from the wheelhouse only.
ARG PIP_NO_INDEX=0
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
# The wheelhouse glob may match nothing (registry build); pip then uses its index.
COPY pyproject.toml scripts/prune-venv.sh .run/wheelhouse* ./
# Dependencies straight from pyproject.toml (one source of truth) into a venv the final stage copies.
RUN python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --find-links /build -r requirements.txt \
    && /opt/venv/bin/python -c "import torch; assert not torch.version.cuda, 'CUDA torch: use a CPU wheel index'" \
    && sh prune-venv.sh /opt/venv

FROM python:3.11-slim AS runtime
# Fixed numeric ids: Kubernetes can only verify runAsNonRoot for a numeric USER.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-log-init --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app
# System packages the service runs go here, in their own step BEFORE the pruning below (apt needs its lists,
# dpkg its perl).
# Graphviz's `dot` draws the graph for Accept: image/svg+xml (~150 MB installed, measured in docs/playground.md).
# Skipped when the base already has it: the offline test build (scripts/build-base-image.sh) bakes it in.
# Not version-pinned: Debian stable only ships security fixes of the same upstream version.
# hadolint ignore=DL3008
RUN command -v dot >/dev/null || { apt-get update \
        && apt-get install -y --no-install-recommends graphviz \
        && rm -rf /var/lib/apt/lists/*; }
# Then what `dot -Tsvg` never loads (bitmap plugins with their AV1/HEVC codecs, X11, the other programs;
# ~47 MB); the script checks that dot still draws a labelled SVG.
COPY scripts/prune-graphviz.py /tmp/
RUN python3 /tmp/prune-graphviz.py && rm /tmp/prune-graphviz.py
# Then drop what a server never reads: docs, man pages, translations, apt lists and caches, glibc's iconv
# modules (Python has its own codecs), perl (only dpkg's maintainer scripts use it), Python's
# lib2to3/idlelib/ensurepip/pydoc data (the globs cover Debian's /usr/lib and the official image's /usr/local).
RUN rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/python-wheels \
       /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/* \
       /usr/lib/x86_64-linux-gnu/gconv /usr/bin/perl* /usr/lib/x86_64-linux-gnu/perl-base /usr/share/perl5 \
       /usr/lib/python3*/lib2to3 /usr/lib/python3*/idlelib /usr/lib/python3*/ensurepip /usr/lib/python3*/pydoc_data \
       /usr/local/lib/python3*/lib2to3 /usr/local/lib/python3*/idlelib /usr/local/lib/python3*/ensurepip \
       /usr/local/lib/python3*/pydoc_data /usr/local/lib/python3*/test
WORKDIR /app
COPY pyproject.toml ./
COPY deploy/gunicorn.conf.py deploy/gunicorn.conf.py
COPY schemas/ schemas/
COPY service/ service/
COPY --from=build /opt/venv /opt/venv
# Byte-compile now, the app and the standard library, unchecked-hash as the venv (see the build stage): at run
# time the root filesystem may be read-only.
RUN python3 -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /app/service /app/schemas \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

FROM scratch
# hadolint ignore=DL3067
COPY --from=runtime / /
WORKDIR /app
# The version label comes from pyproject.toml (the one version source): build with
#   --build-arg VERSION="$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")"
ARG VERSION
LABEL org.opencontainers.image.title="gradsvc" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

# HOST/PORT are read by deploy/gunicorn.conf.py.  WEB_CONCURRENCY is fixed here because os.cpu_count()
# in a container is the host's count; each worker holds its own torch (hundreds of MB).
# TORCH_THREADS=1: one intra-op thread per worker, the workers are the parallelism.
# MAX_WORKER_RSS_MB=512: 2 workers x (512 + MAX_REQUEST_BYTES 256 MiB) + the master fit a 2 GiB container
# (`docker run -m 2g`; the app's own default, 768, needs 2.3 GiB: docs/operate.md "Sizing a course").
# (FROM scratch inherits no ENV: PATH and LANG are the base image's values.)
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    WEB_CONCURRENCY=2 \
    MAX_WORKER_RSS_MB=512 \
    TORCH_THREADS=1 \
    OMP_NUM_THREADS=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

USER 10001:10001
EXPOSE 8000
# No curl in the slim image: the standard library does it (urlopen raises on non-2xx -> exit 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "service.wsgi:app"]
