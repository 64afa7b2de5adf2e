# syntax=docker/dockerfile:1
# One image for every grayroute process: control plane, router, reconciler and
# the Helm hook Jobs. The entrypoint is the `grayroute` command; the chart
# passes each workload's subcommand.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the distribution and its dependencies into a venv -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/grayroute
WORKDIR /src
COPY pyproject.toml README.md ./
COPY control_plane ./control_plane
COPY router ./router
COPY migrations ./migrations
COPY web ./web
# A regular (not editable) install, so the runtime stage needs no source tree;
# `--help` proves the console script and its imports work.
RUN /opt/grayroute/bin/pip install . \
 && /opt/grayroute/bin/grayroute --help >/dev/null

# --- runtime: the venv and an unprivileged user, nothing else ---------------
FROM ${PYTHON_IMAGE}
# A fixed numeric UID/GID lets Kubernetes verify runAsNonRoot; the chart uses
# the same numbers.
RUN groupadd --system --gid 10001 grayroute \
 && useradd --system --uid 10001 --gid grayroute --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin grayroute
COPY --from=build /opt/grayroute /opt/grayroute
ENV PATH=/opt/grayroute/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The only writable place under the chart's read-only root filesystem (an
# emptyDir); relative state paths resolve here.
WORKDIR /tmp
USER 10001:10001
# control plane 8080, router 8000, reconciler health 8081
EXPOSE 8080 8000 8081
ENTRYPOINT ["grayroute"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
