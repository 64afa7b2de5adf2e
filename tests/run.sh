#!/usr/bin/env bash
# The test command. On a fresh Debian machine (as root) it installs what the
# tests need — Postgres, Redis, Chromium, promtool, nginx and wrk for the benchmarks —
# builds a virtual environment from pyproject.toml and runs pytest. The tests
# start their own Postgres and Redis on loopback (tests/services.py).
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=(postgresql redis-server chromium nginx wrk prometheus)
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null || missing+=(nginx)  # benchmarks only
command -v wrk >/dev/null || missing+=(wrk)  # benchmarks only
command -v promtool >/dev/null || missing+=(prometheus)  # promtool checks and unit-tests the chart's alert rules
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or install them: apt-get install -y ${debian_packages[*]})" >&2
    exit 1
  fi
  echo "==> installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian package starts a system Redis; the tests never use it.

venv=${GRAYROUTE_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv"
  python3 -m venv "$venv"
fi
echo "==> installing grayroute with its test extras"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e .
# moto needs boto3, whose releases move in lockstep with botocore; s3fs's aiobotocore pins botocore
# tightly. Naming the boto3 that matches the installed botocore spares pip a long backtrack
# through boto3 releases (minutes on a fresh machine).
botocore_version=$("$venv/bin/python" -c 'import botocore; print(botocore.__version__)')
"$venv/bin/python" -m pip install -q -e '.[test]' "boto3==$botocore_version"

echo "==> running the tests"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
