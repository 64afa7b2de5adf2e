"""The ``grayroute`` command.

Every failure a person can fix is one line on stderr and a non-zero exit:
commands that open the database say which one they use, and refuse one that
is missing or not migrated, with the command that fixes it.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import TypeAdapter, ValidationError

from control_plane.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

_T = TypeVar("_T")

# Where ``grayroute demo`` keeps its SQLite file unless told otherwise (``--data-dir``).
DEMO_DATABASE = Path(".grayroute-demo") / "grayroute.db"


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        # One line naming each variable: pydantic's own text spans several lines and links to its docs.
        problems = "; ".join(
            (f"GRAYROUTE_{'.'.join(str(p) for p in e['loc']).upper()}: " if e["loc"] else "")
            + str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors())
        raise SystemExit(f"grayroute: configuration error: {problems}") from None
    except SettingsError as exc:
        raise SystemExit(f"grayroute: configuration error: {exc}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database).resolve() if database and database != ":memory:" else None


def database_label(url: str) -> str:
    """The database as a person can recognise it: the file for SQLite, the URL without password otherwise."""
    from sqlalchemy.engine import make_url

    path = _sqlite_path(url) if url.startswith("sqlite") else None
    return f"SQLite file {path}" if path else make_url(url).render_as_string(hide_password=True)


def _database_settings() -> Settings:
    """Settings for a command that opens the database; the demo's database when nothing else is there.

    Without GRAYROUTE_DATABASE_URL the embedded default is ./grayroute.db. A
    person who ran ``grayroute demo`` here means its database, so that one is
    used when ./grayroute.db does not exist (the command prints which it uses).
    """
    settings = _settings()
    embedded = _sqlite_path(settings.database_url) if settings.is_sqlite else None
    if "database_url" not in settings.model_fields_set and embedded and not embedded.exists() \
            and DEMO_DATABASE.exists():
        settings = settings.model_copy(update={"database_url": f"sqlite+aiosqlite:///{DEMO_DATABASE.resolve()}"})
    return settings


async def _open_database(settings: Settings) -> AsyncEngine:
    """An engine on a reachable, migrated database, or a one-line SystemExit saying what to do."""
    from control_plane import migrate
    from control_plane.db import create_engine

    label = database_label(settings.database_url)
    path = _sqlite_path(settings.database_url) if settings.is_sqlite else None
    if path is not None and not path.exists():
        # Opening it would create an empty file and fail later on a missing table.
        raise SystemExit(f"grayroute: no database at {path}: set GRAYROUTE_DATABASE_URL to yours (the demo prints "
                         "its own), or create this one with `grayroute db upgrade`")
    engine = create_engine(settings)
    try:
        at = await migrate.current(engine)
    except Exception as exc:  # noqa: BLE001 - any failure to connect is told in one line
        await engine.dispose()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SystemExit(f"grayroute: cannot reach the database {label}: {reason}") from None
    expected = migrate.head()
    if at != expected:
        await engine.dispose()
        raise SystemExit(f"grayroute: the database {label} is not migrated (schema at {at or 'no revision'}, "
                         f"this grayroute needs {expected}): run `grayroute db upgrade`")
    print(f"database: {label}", file=sys.stderr)
    return engine


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from control_plane.app import create_app

    settings = _settings()
    if settings.uses_demo_secret and not _is_loopback(args.host):
        # Anyone who knows the built-in key (it is in the source) can forge a UI session cookie.
        raise SystemExit(f"grayroute: refusing to listen on {args.host} with the built-in demo secret key; "
                         "set GRAYROUTE_SECRET_KEY (e.g. `openssl rand -base64 32`) or use --host 127.0.0.1")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level.lower(),
                proxy_headers=True, access_log=args.access_log)
    return 0


def _db(args: argparse.Namespace) -> int:
    from control_plane import migrate

    url = _settings().database_url
    print(f"database: {database_label(url)}", file=sys.stderr)
    try:
        if args.action == "upgrade":
            migrate.upgrade(url, args.revision or "head")
        elif args.action == "downgrade":
            migrate.downgrade(url, args.revision or "-1")
        else:
            migrate.check(url)
    except Exception as exc:  # noqa: BLE001 - unreachable database, unknown revision, drift: one line each
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SystemExit(f"grayroute db {args.action}: {reason}") from None
    return 0


async def _with_session(work: Callable[[Settings, AsyncSession], Awaitable[_T]]) -> _T:
    from control_plane.db import session_factory

    settings = _database_settings()
    engine = await _open_database(settings)
    try:
        async with session_factory(engine)() as session:
            return await work(settings, session)
    finally:
        await engine.dispose()


def _token(args: argparse.Namespace) -> int:
    from control_plane.tokens import service as tokens_service
    from control_plane.auth.service import Actor, Role

    async def work(_settings: Settings, session):  # type: ignore[no-untyped-def]
        _, plaintext = await tokens_service.create(session, name=args.name, role=args.role,
                                                 actor=Actor("cli", Role.ADMIN))
        return plaintext

    print(asyncio.run(_with_session(work)))
    return 0


def _token_list(_args: argparse.Namespace) -> int:
    from control_plane.tokens import service as tokens_service
    from control_plane.auth.models import Token

    async def work(_settings: Settings, session: AsyncSession) -> list[Token]:
        return list(await tokens_service.list(session))

    tokens = asyncio.run(_with_session(work))
    print(f"{'ID':>4}  {'NAME':<24} {'ROLE':<16} {'PREFIX':<12} {'CREATED':<20} REVOKED")
    for token in tokens:
        revoked = token.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if token.revoked_at else "-"
        print(f"{token.id:>4}  {token.name:<24} {token.role:<16} {token.prefix:<12} "
              f"{token.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {revoked}")
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from control_plane.auth.service import Actor, Role
    from control_plane.tokens import service as tokens_service
    from control_plane.auth.models import Token

    async def work(_settings: Settings, session: AsyncSession) -> Token:
        return await tokens_service.revoke(session, token_id=args.id, actor=Actor("cli", Role.ADMIN))

    token = asyncio.run(_with_session(work))
    print(f"revoked token {token.id} ({token.name}, {token.role}); its next request is refused")
    return 0


def _pools(args: argparse.Namespace) -> int:
    from control_plane.auth.service import Actor, Role
    from control_plane.deployments import service as deployments_service
    from control_plane.traffic.publisher import SnapshotPublisher, notifier_for
    from control_plane.registry import service as registry_service
    from control_plane.registry.schemas import PoolPut

    try:
        raw = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise SystemExit(f"grayroute: {args.file}: {exc.strerror}") from None
    except ValueError as exc:
        raise SystemExit(f"grayroute: {args.file}: not JSON: {exc}") from None
    try:
        pools = {item["name"]: TypeAdapter(PoolPut).validate_python({k: v for k, v in item.items() if k != "name"})
                 for item in raw}
    except (KeyError, TypeError, ValidationError) as exc:
        raise SystemExit(f"grayroute: {args.file}: invalid pool list: {exc}") from None

    async def work(settings: Settings, session):  # type: ignore[no-untyped-def]
        from control_plane.db import session_factory

        notifier = notifier_for(settings.redis_url)
        publisher = SnapshotPublisher(session_factory(session.bind), notifier)
        try:
            changed = await registry_service.import_pools(session, pools=pools, actor=Actor("helm", Role.ADMIN),
                                                          publisher=publisher,
                                                          registered=deployments_service.REGISTERED_ENDPOINTS)
            await publisher.drain()
            return changed
        finally:
            await notifier.close()

    changed = asyncio.run(_with_session(work))
    print(f"{len(pools)} pools imported, {changed} changed")
    return 0


POOLS_FORMAT = """\
FILE is a JSON list of pools; each is created, or updated when the name exists:

  [{"name": "a100", "gpu_arch": "sm_80", "kind": "kubernetes", "trt_version": "10.3.0",
    "namespace": "inference", "node_selector": {"gpu": "a100"},
    "runtime_image": "nvcr.io/nvidia/tritonserver:24.08-py3",
    "gpu_hourly_price": "2.50", "currency": "USD", "gpus_per_replica": 1}]

name, gpu_arch (sm_XY), kind (kubernetes | local | external) and trt_version
are required; namespace, node_selector and runtime_image are optional.
gpu_hourly_price (per GPU-hour, with its ISO 4217 currency) and
gpus_per_replica (default 1) give the version report its cost figures. The
Helm chart writes this file from its `pools:` value.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grayroute")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grayroute", description="Gray-release control plane for TensorRT engines")
    parser.add_argument("--version", action="version", version=f"grayroute {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API and web UI",
                                description="Run the control plane: the REST API under /api/v1 (docs at /docs) "
                                            "and the web UI under /ui. Configuration comes from GRAYROUTE_* "
                                            "variables (see the README).")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    serve.add_argument("--access-log", action="store_true", help="log every request, one line each (default: off)")
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="migrate the database schema")
    db.add_argument("action", choices=["upgrade", "downgrade", "check"])
    db.add_argument("revision", nargs="?", help="target (default: head for upgrade, -1 for downgrade)")
    db.set_defaults(run=_db)

    token = commands.add_parser("token", help="manage API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True,
                        choices=["admin", "publisher", "release-manager", "viewer", "router"])
    create.set_defaults(run=_token)
    list_ = token_commands.add_parser("list", help="list tokens: id, name, role, prefix, created, revoked")
    list_.set_defaults(run=_token_list)
    revoke = token_commands.add_parser("revoke", help="revoke a token by id (see `token list`); refused at once")
    revoke.add_argument("id", type=int, help="the token's id")
    revoke.set_defaults(run=_token_revoke)

    pools = commands.add_parser("pools", help="manage GPU pools")
    pool_commands = pools.add_subparsers(dest="pools_command", required=True)
    import_ = pool_commands.add_parser("import", help="create or update pools from a JSON list",
                                       description="Create or update GPU pools from a JSON file.",
                                       epilog=POOLS_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    import_.add_argument("file", metavar="FILE", help="JSON list of pools (format below)")
    import_.set_defaults(run=_pools)

    _add_component_commands(commands)
    return parser


def _add_component_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Commands whose code lives with their component."""
    import importlib

    for name, module, help_text in (
        ("router", "router.cli", "run the edge router (data plane)"),
        ("reconcile", "control_plane.reconciler.cli", "run the deployment reconciler"),
        ("register", "control_plane.registry.cli", "register a version and its engines (from CI)"),
        ("engine", "control_plane.reconciler.fetch", "fetch and verify an engine (the pods' init container)"),
        ("demo", "control_plane.demo", "run everything on this machine with a live canary"),
    ):
        try:
            component = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        sub = commands.add_parser(name, help=help_text, description=getattr(component, "DESCRIPTION", None),
                                  epilog=getattr(component, "EPILOG", None),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        component.add_arguments(sub)
        sub.set_defaults(run=component.run)


def main(argv: list[str] | None = None) -> int:
    from control_plane.errors import GrayrouteError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except GrayrouteError as exc:  # a service refused (unknown token id, invalid pool…): one line, no traceback
        raise SystemExit(f"grayroute: {exc.message}") from None


if __name__ == "__main__":
    sys.exit(main())
