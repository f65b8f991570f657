# One image for every role: `python -m feedsvc api|writer|setup`, `python -m bot`.
# Stages: builder (uv resolves the committed uv.lock into /app/.venv), test (the same
# venv plus the dev group and the test suite, for scripts/test-in-docker), and the
# runtime image last, so a plain `docker build .` produces it.
#
# The builder and the runtime use the same Python image: the venv's interpreter is a
# symlink to /usr/local/bin/python3.11, which must exist at the same path in both.
# https://docs.astral.sh/uv/guides/integration/docker/#non-editable-installs
# The tag exists upstream (python:3.11.14-slim-bookworm, e.g. digest sha256:65a93d69...).
FROM python:3.11.14-slim-bookworm AS builder
# uv from PyPI, pinned to the version that wrote uv.lock.
RUN pip install --no-cache-dir uv==0.13.9
# Compile bytecode once at build time; keep no download cache in the layers (no
# cache mounts either, so the classic builder works as well as BuildKit); never
# download an interpreter (pyproject: python-preference only-system).
# https://docs.astral.sh/uv/guides/integration/docker/#compiling-bytecode
ENV UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
# https://docs.astral.sh/uv/guides/integration/docker/#intermediate-layers
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-editable
# Then the project itself, installed non-editable so the venv alone is the app.
COPY README.md ./
COPY feedsvc/ feedsvc/
COPY bot/ bot/
RUN uv sync --frozen --no-dev --no-editable

FROM builder AS test
# The dev group (pytest, ...) and the suite; runs from /src so pyproject's pytest
# settings (pythonpath, markers, filterwarnings) apply as they do natively, and the
# feedsvc processes the tests start (devstack/) import /src/feedsvc.
# The dependencies first, so editing a test does not reinstall them.
RUN uv sync --frozen --no-editable
COPY tests/ tests/
COPY scripts/ scripts/
# The dev stack the tests start their processes with; not in the wheel either.
COPY devstack/ devstack/
# The benchmarks' package: its unit tests run here; it is not in the wheel (pyproject).
COPY bench/ bench/
# Root, unlike the runtime: pytest writes its caches under /src, and the tests write
# their process logs under /tmp (devstack.scratch_dir).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1
CMD ["python", "-m", "pytest"]

FROM python:3.11.14-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 feedsvc \
    && useradd --system --uid 10001 --gid feedsvc --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin feedsvc
# Only the venv: feedsvc and bot are installed inside it, the sources stay behind.
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# Numeric, so the host and Kubernetes can tell it is not root.
USER 10001:10001
EXPOSE 8000
CMD ["python", "-m", "feedsvc", "api"]
