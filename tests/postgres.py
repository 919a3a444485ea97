"""A throwaway Postgres cluster for the DuckLake tests: Debian's ``postgresql`` binaries
(``/usr/lib/postgresql/<version>/bin``; ``.ci/run`` installs them when missing), started with
``initdb`` and ``pg_ctl`` in a temporary folder on a free loopback port, trust authentication,
no fsync, and removed at the end of the session.

As root (CI), the server runs as the ``postgres`` user the Debian package creates: Postgres
refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from itertools import count
from pathlib import Path

_names = count()


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb``, if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresCluster:
    bin: Path
    root: Path
    port: int = 0

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *args], check=True, capture_output=True, text=True, cwd=self.root, timeout=60
        )

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
        data = self.root / "data"
        self._run(
            str(self.bin / "initdb"),
            "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.port = _free_port()
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"),
            "-w", "-t", "60", "-o", options, "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"
        )

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for ``dbname``."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self) -> str:
        """A new, empty database; returns its libpq connection string."""
        name = f"lake_{os.getpid()}_{next(_names)}"
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             name],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return self.dsn(name)


def start_cluster(bin_dir: Path) -> PostgresCluster:
    # Not under pytest's tmp_path: its folders are private to root, and the server runs as
    # ``postgres``.
    root = Path(tempfile.mkdtemp(prefix="pendo-planhat-pg-"))
    cluster = PostgresCluster(bin=bin_dir, root=root)
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster
