"""The ``megabrain`` command.

- ``megabrain serve``   the API and every configured pool in one process (embedded store without REDIS_URL)
- ``megabrain web``     the API tier only, on ``$PORT``
- ``megabrain worker --providers openai,anthropic``   a worker process serving those pools ('*' = all);
  ``--processes N`` runs N of them (default ``$MEGABRAIN_WORKER_PROCESSES`` or 1)

Without ``REDIS_URL`` the store is the data dir's embedded server (common/store.py): ``serve`` owns it,
the other commands find it there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from api.cli import catalog, credits, keys, status
from common.settings import ConfigError, Settings, load_settings
from common.telemetry import setup_logging


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """How every web process runs uvicorn (one process or ``--workers N``)."""
    from api.http_protocol import OneWriteProtocol

    return dict(
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=95,  # longer than the Heroku router's 90 s keep-alive
        # the client address is ours to derive (api/access/client_ip.py, trusted hops only): uvicorn must not
        # rewrite the peer from X-Forwarded-For
        proxy_headers=False,
        ws="none",  # no WebSocket routes: an Upgrade header on a POST is answered like any other request
        http=OneWriteProtocol,  # httptools, a response's head and body in one write
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )


def _uvicorn_config(settings: Settings, app: object, **extra: object) -> "object":
    import uvicorn

    return uvicorn.Config(app, lifespan="on", **uvicorn_options(settings), **extra)  # type: ignore[arg-type]


def _running_store(settings: Settings) -> None:
    """``web`` and ``worker`` without REDIS_URL join the data dir's running store, or say how to get one."""
    if settings.redis_url:
        return
    from common.store import StoreError, reach

    try:
        with reach(None, settings.data_dir, start=False) as url:
            settings.redis_url = os.environ["REDIS_URL"] = url  # the environment too: `web --workers N`
    except StoreError as exc:
        sys.exit(f"megabrain: {exc}")


def _check_secrets(settings: Settings) -> None:
    """The web tier's secrets, checked before anything starts: a clear line and exit status 2 otherwise."""
    from common.server_secret import check_web_secrets

    try:
        check_web_secrets(settings)
    except ConfigError as exc:
        sys.exit(f"megabrain: {exc}")


def cmd_web(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from api.app import create_app

    _running_store(settings)
    _check_secrets(settings)

    workers = int(args.workers or os.environ.get("WEB_CONCURRENCY") or 1)
    if workers > 1:
        uvicorn.run("api.app:create_app", factory=True, workers=workers, **uvicorn_options(settings))  # type: ignore[arg-type]
        return
    server = uvicorn.Server(_uvicorn_config(settings, create_app(settings)))  # type: ignore[arg-type]
    server.run()


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from workers.pool import resolve_pools, run_pools

    _running_store(settings)
    pools = resolve_pools(settings, args.providers)
    processes = int(args.processes or os.environ.get("MEGABRAIN_WORKER_PROCESSES") or 1)
    if processes > 1:
        from workers.supervisor import supervise

        supervise(processes, lambda: _run(run_pools(settings, pools)), grace=settings.shutdown_grace)
        return
    _run(run_pools(settings, pools))


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    """API + all configured pools in one process; without REDIS_URL, on the embedded store it owns."""
    import uvicorn

    from api.app import create_app
    from common.store import EmbeddedServer, StoreError, StoreWatch
    from workers.pool import PoolProcess, resolve_pools

    pools = resolve_pools(settings, args.providers)
    if settings.redis_url:
        _check_secrets(settings)
    store = None
    if not settings.redis_url:
        store = EmbeddedServer(settings.data_dir)
        try:
            settings.redis_url = store.start()
        except StoreError as exc:
            sys.exit(f"megabrain: {exc}")
        try:
            _check_secrets(settings)
        except SystemExit:
            store.stop()
            raise

    async def main() -> None:
        app = create_app(settings)
        watch = StoreWatch(store) if store else None
        app.state.store_watch = watch  # /health turns 503 when the store stays down (api/routes/ops.py)
        server = uvicorn.Server(_uvicorn_config(settings, app))  # type: ignore[arg-type]
        # uvicorn re-raises the signal that stopped it under the handler it found: make that one harmless,
        # so the pools and the store below are stopped instead of the process dying on the spot
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
        process = PoolProcess(settings, pools) if pools else None
        if process:
            await process.start()
        if watch:
            watch.start()  # a store that dies is started again on its AOF (common/store.py StoreWatch)
        where = (f"embedded store in {store.directory}{' (adopted)' if store.adopted else ''}" if store
                 else "Redis at REDIS_URL")
        print(f"megabrain: serving on http://{settings.host}:{settings.port} "
              f"({where}; pools: {', '.join(pools) or 'none configured'})", file=sys.stderr, flush=True)
        try:
            await server.serve()
        finally:
            if watch:
                await watch.close()
            if process:
                await process.stop()

    try:
        _run(main())
    finally:
        if store:
            store.stop()  # after the pools: their last usage writes land first; SHUTDOWN fsyncs the AOF


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megabrain", description="Megabrain Gateway")
    parser.add_argument("--config", help="TOML config file (default: $MEGABRAIN_CONFIG or ./megabrain.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="API and all pools in one process")
    serve.add_argument("--providers", default="*", help="pools to run (default: every configured provider)")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    web = sub.add_parser("web", help="the API tier only (binds $PORT)")
    web.add_argument("--port", type=int)
    web.add_argument("--workers", type=int, help="processes (default: $WEB_CONCURRENCY or 1)")
    web.set_defaults(func=cmd_web)

    worker = sub.add_parser("worker", help="one worker process for some provider pools")
    worker.add_argument("--providers", default="*", help="comma-separated provider ids, or '*' for all configured")
    worker.add_argument("--processes", type=int,
                        help="worker processes, one per core (default: $MEGABRAIN_WORKER_PROCESSES or 1)")
    worker.set_defaults(func=cmd_worker)

    for module in (keys, credits, catalog, status):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(config_path=args.config)
    except ConfigError as exc:
        parser.exit(2, f"megabrain: {exc}\n")
    if getattr(args, "port", None):
        settings.port = args.port
    setup_logging(settings.log_level)
    args.func(settings, args)


if __name__ == "__main__":
    main()
