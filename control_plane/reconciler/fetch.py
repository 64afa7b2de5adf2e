"""``grayroute engine fetch``: put an engine into a Triton model repository, verified.

The init container of every Kubernetes deployment runs this (the grayroute
image itself). It downloads ``s3://``, ``gs://`` or ``https://`` URIs through
fsspec (s3fs, gcsfs, aiohttp), retries what may pass (timeouts, refused
connections, 5xx), prints a progress line, checks the size and the sha256,
and only then moves the file into place: a wrong artifact never becomes a
model. Credentials come from the environment the pod gives it (IRSA, GKE
Workload Identity, or a Secret's keys, GRAYROUTE_FETCH_BEARER_TOKEN for
https); this command never takes any as an argument.

Progress goes to stdout. Every failure is one line on stderr and a non-zero
exit; with
``--message-file /dev/termination-log`` the same line becomes the init
container's termination message, which the reconciler writes to the
deployment's status.

Errors::

    FetchError                  one line, exit 1
    ├── ObjectMissing           no such bucket, object or URL (404)
    ├── CredentialRefused       the store refused the credentials, or none were found (401, 403)
    ├── SizeMismatch            the object's size differs from the registered one
    ├── ChecksumMismatch        the bytes' sha256 differs from the registered one
    └── Unreachable             still failing after the retries (network, 5xx)
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import ssl
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_CHUNK = 8 << 20
_PROGRESS_SECONDS = 2.0
_SCHEMES = ("s3", "gs", "gcs", "https", "http")


class FetchError(Exception):
    """A fetch that cannot succeed as asked."""


class ObjectMissing(FetchError):
    pass


class CredentialRefused(FetchError):
    pass


class SizeMismatch(FetchError):
    pass


class ChecksumMismatch(FetchError):
    pass


class Unreachable(FetchError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="engine_command", required=True)
    fetch = commands.add_parser("fetch", help="download an engine, check its size and sha256, move it into place")
    fetch.add_argument("uri", help="s3://bucket/key, gs://bucket/object or https://host/path")
    fetch.add_argument("--sha256", required=True, help="the registered sha256 (64 hex digits)")
    fetch.add_argument("--dest", required=True, type=Path, help="where the verified file goes")
    fetch.add_argument("--size", type=int, help="the registered size in bytes, checked before and after")
    fetch.add_argument("--retries", type=int, default=4, help="retries of transient failures (default 4)")
    fetch.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 or AWS)")
    fetch.add_argument("--ca-file", help="PEM bundle of the CA that signed the store's certificate")
    fetch.add_argument("--model-config", type=Path, help="also write Triton's config.pbtxt here, once verified")
    fetch.add_argument("--model-config-text", help="the text of --model-config")
    fetch.add_argument("--message-file", type=Path,
                       help="write the failure line here too (Kubernetes: /dev/termination-log)")
    fetch.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The stores' clients log their own retries with tracebacks; the progress lines and the one
    # failure line already say what happened, so their records (and warnings) are dropped.
    logging.getLogger().addHandler(logging.NullHandler())
    warnings.simplefilter("ignore")
    try:
        _check_args(args)
        fetch(args.uri, sha256=args.sha256.lower(), dest=args.dest, size=args.size, retries=args.retries,
              endpoint_url=args.endpoint_url, ca_file=args.ca_file)
        if args.model_config is not None:
            try:
                _write_atomically(args.model_config, (args.model_config_text or "").encode())
            except OSError as exc:
                raise FetchError(f"writing {args.model_config}: {exc.strerror or exc}") from None
    except FetchError as exc:
        line = f"engine fetch failed: {exc}"
        if args.message_file is not None:
            try:
                args.message_file.write_text(line + "\n")
            except OSError:
                pass  # the line still goes to stderr, which is all a terminal user needs
        raise SystemExit(f"grayroute {line}") from None
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if len(args.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in args.sha256):
        raise FetchError(f"--sha256 {args.sha256!r}: expected 64 hex digits")
    scheme = args.uri.partition("://")[0].lower()
    if scheme not in _SCHEMES or "://" not in args.uri:
        raise FetchError(f"{args.uri}: unsupported URI (use s3://, gs:// or https://)")
    if (args.model_config is None) != (args.model_config_text is None):
        raise FetchError("--model-config and --model-config-text go together")


# ------------------------------------------------------------------ the download


def _filesystem(uri: str, *, endpoint_url: str | None, ca_file: str | None) -> tuple[Any, str]:
    import fsspec

    from control_plane.settings import FetchSettings

    scheme = uri.partition("://")[0].lower()
    options: dict[str, Any] = {}
    if scheme == "s3":
        client: dict[str, Any] = {}
        if endpoint_url:
            client["endpoint_url"] = endpoint_url
        if ca_file:
            client["verify"] = ca_file
        # Short retries inside botocore; the loop below retries whole downloads.
        options = {"client_kwargs": client, "config_kwargs": {"retries": {"max_attempts": 2}},
                   "default_fill_cache": False}
    elif scheme in ("http", "https"):
        if ca_file:
            options["ssl"] = ssl.create_default_context(cafile=ca_file)
        token = FetchSettings().bearer_token
        if token is not None:
            options["headers"] = {"Authorization": f"Bearer {token.get_secret_value()}"}
        # No connection pooling games: one stream, read start to end.
        options["block_size"] = 0
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def _classify(exc: BaseException, uri: str) -> FetchError | None:
    """The permanent failure ``exc`` stands for, or None when a retry may help."""
    # fsspec's http turns a failed HEAD/GET into FileNotFoundError; the real answer is in its causes.
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    status = next((s for s in map(_status_of, chain) if s is not None), None)
    names = {type(e).__name__ for e in chain}
    if any(isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e) for e in chain):
        return CredentialRefused(f"{uri}: the server's TLS certificate is not trusted; pass --ca-file or set "
                                 "SSL_CERT_FILE to the CA that signed it")
    if status in (401, 403) or any(isinstance(e, PermissionError) for e in chain):
        detail = f"HTTP {status}" if status else _short(exc)
        return CredentialRefused(f"{uri}: access refused ({detail}); check the pool's service account "
                                 "or credentials Secret")
    if names & {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError", "RefreshError"}:
        return CredentialRefused(f"{uri}: no usable credentials ({_short(exc)}); give the pool a service "
                                 "account or a credentials Secret")
    if status == 404 or (status is None and isinstance(exc, FileNotFoundError)):
        return ObjectMissing(f"{uri}: no such object (missing bucket, key or URL)")
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return FetchError(f"{uri}: the store answered {status} ({_short(exc)})")
    return None


def _status_of(exc: BaseException) -> int | None:
    for attr in ("status", "code", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    return None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _copy(source: BinaryIO, target: BinaryIO, total: int | None, progress: Callable[[str], None]) -> tuple[str, int]:
    digest, done = hashlib.sha256(), 0
    started = last = time.monotonic()
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
        target.write(chunk)
        done += len(chunk)
        now = time.monotonic()
        if now - last >= _PROGRESS_SECONDS:
            last = now
            rate = done / max(now - started, 1e-6)
            share = f"{100 * done / total:.0f}% " if total else ""
            progress(f"  {share}{_human(done)}{' of ' + _human(total) if total else ''} at {_human(rate)}/s")
    return digest.hexdigest(), done


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(uri: str, *, sha256: str, dest: Path, size: int | None = None, retries: int = 4,
          endpoint_url: str | None = None, ca_file: str | None = None,
          progress: Callable[[str], None] | None = None, backoff: float = 1.0) -> None:
    """Download ``uri`` to ``dest``, verified; raise a :class:`FetchError` subclass otherwise."""
    say = progress or (lambda line: print(line, flush=True))
    if dest.is_file() and _sha256_of(dest) == sha256:
        say(f"{dest} is already there with sha256 {sha256[:12]}…; nothing to fetch")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        attempt += 1
        try:
            _download(uri, sha256=sha256, dest=dest, size=size, endpoint_url=endpoint_url, ca_file=ca_file,
                      say=say)
            return
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified here, the one boundary to foreign errors
            permanent = _classify(exc, uri)
            if permanent is not None:
                raise permanent from None
            if attempt > retries:
                raise Unreachable(f"{uri}: still failing after {attempt} attempts: {_short(exc)}") from None
            delay = backoff * 2 ** (attempt - 1)
            say(f"  attempt {attempt} failed ({_short(exc)}); retrying in {delay:.0f} s")
            time.sleep(delay)


def _download(uri: str, *, sha256: str, dest: Path, size: int | None, endpoint_url: str | None,
              ca_file: str | None, say: Callable[[str], None]) -> None:
    fs, path = _filesystem(uri, endpoint_url=endpoint_url, ca_file=ca_file)
    info = fs.info(path)
    remote = info.get("size")
    if size is not None and remote is not None and int(remote) != size:
        raise SizeMismatch(f"{uri}: the object has {remote} bytes, {size} were registered")
    total = size if size is not None else (int(remote) if remote is not None else None)
    say(f"fetching {uri} ({_human(total) if total is not None else 'size unknown'}) to {dest}")
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        started = time.monotonic()
        with os.fdopen(fd, "wb") as target, fs.open(path, "rb") as source:
            got, done = _copy(source, target, total, say)
            target.flush()
            os.fsync(target.fileno())
        if size is not None and done != size:
            raise SizeMismatch(f"{uri}: received {done} bytes, {size} were registered")
        if got != sha256:
            raise ChecksumMismatch(f"{uri}: sha256 mismatch: expected {sha256}, got {got}; the artifact is "
                                   "not the registered engine")
        os.replace(tmp, dest)
        say(f"fetched {_human(done)} in {time.monotonic() - started:.1f} s; sha256 {sha256[:12]}… verified")
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
