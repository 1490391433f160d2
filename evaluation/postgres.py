"""A throwaway PostgreSQL server for the tests and `editserve bench serving --parts replicas`: initdb
into a temp dir, listening on 127.0.0.1 on a free port (and a Unix socket in that dir), trust auth, no
fsync; one fresh database per test; stopped and removed at the end. PostgreSQL's binaries refuse to run
as root, so as root they run as the `postgres` OS user (the Debian package makes it). Every wait is
bounded.

`make postgres` installs the Debian package where it is missing; without it the tests skip, saying why.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from evaluation.server import free_port

START_TIMEOUT = 60  # seconds, for pg_ctl's own -t and our subprocess timeouts
STOP_TIMEOUT = 30
OS_USER = "postgres"


class Unavailable(Exception):
    """No PostgreSQL server can be run here; the message says why."""


def bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: pg_config's, else the newest Debian one, else PATH's."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    candidates += [Path(p) for p in debian]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    raise Unavailable("no PostgreSQL server binaries (initdb, pg_ctl); `make postgres` installs them as root")


class PostgresServer:
    def __init__(self):
        self.bin = bin_dir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            try:
                import pwd

                user = pwd.getpwnam(OS_USER)
            except KeyError as exc:
                raise Unavailable(f"running as root and there is no {OS_USER!r} OS user to run PostgreSQL") from exc
            if runuser is None:
                raise Unavailable("running as root and there is no runuser to run PostgreSQL as another user")
            self.as_user = [runuser, "-u", OS_USER, "--"]
        self.root = Path(tempfile.mkdtemp(prefix="editserve-pg-"))
        if self.as_user:
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self.started = False
        self._databases = 0

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        out = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if out.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({out.returncode}): {out.stderr[-2000:]}\n{tail}")
        return out

    def start(self) -> PostgresServer:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-locale", "--no-sync", timeout=START_TIMEOUT,
        )  # fmt: skip
        self.started = True  # from here on stop() has something to stop
        atexit.register(self.stop)  # should the session end without its finaliser
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server on its data (after start()'s initdb, or a pause())."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
            "-w", "-t", str(START_TIMEOUT), "start", timeout=START_TIMEOUT + 10,
        )  # fmt: skip

    def pause(self) -> None:
        """Stop the server as an operator restarting it would (connections cut, committed data kept);
        resume() starts it again on the same port."""
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT), "stop",
            timeout=STOP_TIMEOUT + 10,
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"editserve_test_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def dump(self, url: str, path: Path) -> None:
        """The database at `url` as plain SQL (pg_dump, no owners or privileges), written to `path`."""
        out = self._run(str(self.bin / "pg_dump"), "--no-owner", "--no-privileges", url, timeout=START_TIMEOUT)
        Path(path).write_text(out.stdout)

    def load(self, url: str, path: Path) -> None:
        """Run the SQL of `path` (a dump()) into the database at `url`, stopping at the first error."""
        sql = Path(path).read_text()
        out = subprocess.run(
            [*self.as_user, str(self.bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", url],
            input=sql, capture_output=True, text=True, timeout=START_TIMEOUT, cwd=self.root,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"psql failed ({out.returncode}): {out.stderr[-2000:]}")

    def stop(self) -> None:
        if self.started:
            self.started = False
            try:
                self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", str(STOP_TIMEOUT),
                    "stop", timeout=STOP_TIMEOUT + 10,
                )  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self) -> None:
        """pg_ctl could not stop it: SIGKILL the postmaster named in its pid file (ours, by its id)."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), 9)
            except (ValueError, ProcessLookupError, PermissionError):
                pass
