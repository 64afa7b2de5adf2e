"""The ``grayroute`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import TypeAdapter, ValidationError

from control_plane.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

_T = TypeVar("_T")


def _settings() -> Settings:
    try:
        return get_settings()
    except (SettingsError, ValidationError) as exc:
        raise SystemExit(f"grayroute: configuration error: {exc}") from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from control_plane.app import create_app

    settings = _settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level.lower(),
                proxy_headers=True, access_log=args.access_log)
    return 0


def _db(args: argparse.Namespace) -> int:
    from control_plane import migrate

    url = _settings().database_url
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(url, args.revision or "-1")
    else:
        migrate.check(url)
    return 0


async def _with_session(work: Callable[[Settings, AsyncSession], Awaitable[_T]]) -> _T:
    from control_plane.db import create_engine, session_factory

    settings = _settings()
    engine = create_engine(settings)
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


def _pools(args: argparse.Namespace) -> int:
    from control_plane.auth.service import Actor, Role
    from control_plane.traffic.publisher import SnapshotPublisher, notifier_for
    from control_plane.registry import service as registry_service
    from control_plane.registry.schemas import PoolPut

    raw = json.loads(Path(args.file).read_text())
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
                                                          publisher=publisher)
            await publisher.drain()
            return changed
        finally:
            await notifier.close()

    changed = asyncio.run(_with_session(work))
    print(f"{len(pools)} pools imported, {changed} changed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grayroute", description="Gray-release control plane for TensorRT engines")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API and web UI")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--access-log", action="store_true")
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

    pools = commands.add_parser("pools", help="manage GPU pools")
    pool_commands = pools.add_subparsers(dest="pools_command", required=True)
    import_ = pool_commands.add_parser("import", help="create or update pools from a JSON list")
    import_.add_argument("file")
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
        ("demo", "control_plane.demo", "run everything on this machine with a live canary"),
    ):
        try:
            component = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        sub = commands.add_parser(name, help=help_text)
        component.add_arguments(sub)
        sub.set_defaults(run=component.run)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
