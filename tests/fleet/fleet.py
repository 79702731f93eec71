"""A fleet of worker and beat processes, each as a host of its own, for tests and ``bench/throughput.py``.

Every process gets private temp, var and media folders and, where this machine allows network
namespaces (``tests/fleet/hosts.py``; root here), a network namespace whose only way out is TCP to
PostgreSQL, Redis and (with S3 storage) the S3 endpoint. The web process is the caller (the test's
API client, or the bench). ``storage_env`` is how the fleet reaches storage:

* S3 (``LABSEG_STORAGE=s3`` and ``AWS_*``, with ``s3_port``): nothing shared but the three TCP
  services; the endpoint is rewritten to the host's gateway.
* local storage (``shared_media``): the media folder is the one thing the hosts share, as an NFS
  mount would be; temp and var folders stay private.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

from tests.fleet.hosts import Host, namespaces_available, private_folders
from tests.workers import REPO, Workers


class Fleet:
    def __init__(
        self,
        root: Path,
        *,
        broker_port: int,
        shared_media: Path | None = None,
        storage_env: dict[str, str] | None = None,
        s3_port: int | None = None,
        namespaces: bool | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.broker_port = broker_port
        self.shared_media = shared_media
        self.storage_env = dict(storage_env or {})
        self.s3_port = s3_port
        self.namespaces = namespaces_available() if namespaces is None else namespaces
        self.worker_env = dict(worker_env or {})
        db = connection.settings_dict
        self.db_port = int(db.get("PORT") or 5432)
        self.db_user, self.db_name = db.get("USER") or "postgres", db["NAME"]
        self.hosts: dict[str, Host] = {}
        self.workers = Workers(root, shared_media or root / "no-shared-media", "redis://unused")

    @property
    def isolation(self) -> str:
        """How the hosts are kept apart, in words (for reports)."""
        if self.namespaces:
            return "network namespace per host (veth + TCP forwarders), private temp/var/media"
        return "private temp/var/media folders only (no network namespaces on this machine)"

    def _host_env(self, name: str) -> tuple[dict[str, str], Host | None]:
        host = None
        gateway = "127.0.0.1"
        if self.namespaces:
            host = Host(name)
            self.hosts[name] = host
            ports = [self.db_port, self.broker_port, *([self.s3_port] if self.s3_port else [])]
            for port in ports:
                host.expose(port)
            gateway = host.gateway
        env = {
            **private_folders(self.root, name),
            "DATABASE_URL": f"postgres://{self.db_user}@{gateway}:{self.db_port}/{self.db_name}",
            "CELERY_BROKER_URL": f"redis://{gateway}:{self.broker_port}/0",
            **self.storage_env,
            **self.worker_env,
        }
        if self.shared_media is not None:
            env["LABSEG_MEDIA_ROOT"] = str(self.shared_media)
        if self.s3_port:
            env["AWS_S3_ENDPOINT_URL"] = f"http://{gateway}:{self.s3_port}"
        return env, host

    def start(self, name: str, *, queues: str = "cpu,gpu", env: dict[str, str] | None = None) -> None:
        """A worker host consuming ``queues`` (concurrency 1)."""
        host_env, host = self._host_env(name)
        self.workers.start(
            name, env={**host_env, **(env or {})}, queues=queues, wrap=host.command if host else None
        )

    def start_beat(self, name: str = "beat") -> None:
        """Beat on a host of its own: the reconciler's schedule, sent through the broker."""
        env, host = self._host_env(name)
        command = [
            sys.executable, "-m", "celery", "-A", "labseg", "beat",
            "-s", str(self.root / f"beat-schedule-{name}"), "-l", "info",
        ]  # fmt: skip
        log = (self.root / f"{name}.log").open("wb")
        self.workers.running[name] = subprocess.Popen(
            host.command(command) if host else command,
            cwd=REPO,
            env={**self.workers.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, names: list[str], timeout_s: float = 60) -> None:
        """Until each worker's log says it is ready to consume."""
        deadline = time.monotonic() + timeout_s
        for name in names:
            log = self.root / f"{name}.log"
            while not (log.exists() and " ready." in log.read_text(errors="replace")):
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker {name} did not start\n{self.workers.logs()}")
                if self.workers.running[name].poll() is not None:
                    raise AssertionError(f"worker {name} exited\n{self.workers.logs()}")
                time.sleep(0.2)

    def kill(self, name: str) -> None:
        self.workers.kill(name)

    def close(self) -> None:
        try:
            self.workers.stop_all()
        finally:
            for host in self.hosts.values():
                host.remove()
            self.hosts.clear()
