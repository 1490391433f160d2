"""`editserve` command line: `serve` here; `eval`, `bench`, `scenario` and the train commands live in
their own modules and receive the rest of the command line (imported only when asked for: they pull in
more)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sqlite3
import sys

DELEGATED = {
    "edits": ("app.edits_cli", "export a running server's edits as JSON lines, or import such a file"),
    "eval": ("evaluation.cli", "measure edit, paraphrase and locality success on a dataset"),
    "bench": ("evaluation.bench", "measure latency and throughput"),
    "fault": ("evaluation.faults", "kill -9 during inserts and a full disk: nothing acknowledged is lost"),
    "soak": ("evaluation.soak", "generations and changes at once for a while: no 5xx, no mixed answers"),
    "scenario": ("evaluation.scenario", "edit, restart and withdraw over HTTP against a real server process"),
    "train-serac": ("evaluation.training.serac", "train SERAC's counterfactual model (a LoRA adapter)"),
    "train-scope": ("evaluation.training.scope", "train the scope classifier (Embed retriever + Cross re-ranker)"),
}


EVAL_EXTRA = {"tqdm", "peft", "matplotlib"}  # pyproject.toml's `eval` extra: the harness needs them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editserve", description="An LM whose knowledge is edited over HTTP.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server (settings: EDITSERVE_* variables)")
    serve.add_argument("--host", help="default EDITSERVE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default EDITSERVE_PORT or 8000")
    keys = commands.add_parser("keys", help="make an API key: prints the secret and its EDITSERVE_API_KEYS entry")
    keys.add_argument("name", help="the key's name, recorded as the actor of its edits")
    keys.add_argument("--scope", choices=("read", "edit", "admin"), default="read")
    backup = commands.add_parser("backup", help="copy the data dir's edits out, consistent while a server runs")
    backup.add_argument("path", help="a new (or empty) directory for the backup")
    restore = commands.add_parser("restore", help="copy a backup into a data dir that holds no edits yet")
    restore.add_argument("path", help="the backup's directory")
    for cmd in (backup, restore):
        cmd.add_argument("--data-dir", help="default EDITSERVE_DATA_DIR or ./data")
    for name, (_module, text) in DELEGATED.items():
        commands.add_parser(name, help=f"{text} (see `editserve {name} --help`)", add_help=False)
    return parser


def serve(host: str | None, port: int | None) -> None:
    import uvicorn

    from app.core.config import Settings
    from app.core.security import is_loopback
    from app.main import create_app

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings().model_copy(update=overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.api_keys and not settings.api_keys_file:
        if not is_loopback(settings.host):
            sys.exit(
                f"editserve serve: refusing to serve on {settings.host} without API keys: anyone who can reach it "
                "could change what the model says. Set EDITSERVE_API_KEYS (or EDITSERVE_API_KEYS_FILE), "
                "or serve on 127.0.0.1."
            )
        logging.getLogger("editserve").warning(
            "no API keys configured (EDITSERVE_API_KEYS): open to anyone on this machine, serving on %s only",
            settings.host,
        )
    uvicorn.run(
        create_app(settings, exit_on_load_failure=True),
        host=settings.host,
        port=settings.port,
        access_log=False,  # the app logs each request itself, with its X-Request-Id and latency
        log_level=settings.log_level,
    )


def backup_or_restore(command: str, path: str, data_dir: str | None) -> int:
    from app.core.config import Settings
    from storage import backup

    settings = Settings()
    where = data_dir or settings.data_dir
    if settings.database_url and not settings.database_url.startswith("sqlite"):
        sys.exit(
            f"editserve {command}: the edits are in PostgreSQL (EDITSERVE_DATABASE_URL): use pg_dump / pg_restore "
            f"for the database and copy {where}/blobs with it (docs/operations.md, Backups)"
        )
    try:
        if command == "backup":
            manifest = backup.backup(where, path)
        else:
            manifest = backup.restore(path, where)
    except (backup.BackupError, OSError, sqlite3.Error) as exc:
        sys.exit(f"editserve {command}: {exc}")
    done = {"backup": f"backed up to {path}", "restore": f"restored into {where}"}[command]
    print(f"{done}: {manifest['edits']} edits, {manifest['blobs']} blobs, schema {manifest['schema_revision']}")
    return 0


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        try:
            command = importlib.import_module(DELEGATED[argv[0]][0])
        except ModuleNotFoundError as exc:
            if exc.name not in EVAL_EXTRA:
                raise
            sys.exit(f"editserve {argv[0]}: needs {exc.name}, from the eval extra: pip install 'editserve[eval]'")
        return command.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        serve(args.host, args.port)
    elif args.command in ("backup", "restore"):
        return backup_or_restore(args.command, args.path, args.data_dir)
    elif args.command == "keys":
        from app.core.security import new_key

        secret, entry = new_key(args.name, args.scope)
        print(f"key (give it to the client; it is not stored): {secret}")
        print(f"entry (for EDITSERVE_API_KEYS or the keys file): {entry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
