"""Upload throughput and server memory: a 50 MB and a 500 MB NIfTI through ``POST /api/scans/``.

Starts the real server (``manage.py runserver --noreload``, one process) against PostgreSQL,
streams each generated ``.nii`` (uncompressed int16) as a multipart body from disk (the client
never holds the file in memory either), and prints MB/s (file bytes / seconds until the 201
answer, validation and storage included) and the server's peak resident memory (VmHWM) after
each upload. Flat memory means the peak after 500 MB is about the peak after 50 MB.

``--storage s3`` measures the resumable upload instead (``POST /api/uploads/``, 8 MiB chunks with
``PUT``, ``complete``: the parts assembled on the web host; on S3 the file then goes to the bucket in
parts read from disk while its sha256 and data are checked, ``labseg.storage.store_file``) twice per
file: on local storage and on S3, an S3 server over HTTP on loopback (moto's
server, ``tests/s3.py``) with no local media folder. MB/s counts from the first request to the 201
of ``complete``; ``complete`` alone (sha256, checks, storing) is printed beside it, with the CPU
seconds of the web process, the S3 server and this client during each upload, and the web process's
peak RSS (VmHWM) before and after each upload.

Usage: ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/labseg_bench .venv/bin/python bench/upload.py
[--storage s3]`` (the database is created when missing and emptied first; segmentation on upload is
switched off).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    from tests.s3 import Bucket

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: tests/s3.py is importable
OUT = REPO / "bench" / "out"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/labseg_bench"
PIECE_BYTES = 1024**2
#: The browser's resumable chunk size (LABSEG_UPLOAD_CHUNK_BYTES).
CHUNK_BYTES = 8 * 1024**2
#: (label, grid) of int16 volumes: 320x320x256 = 52 MB, 640x640x640 = 524 MB.
SIZES = [("50 MB", (320, 320, 256)), ("500 MB", (640, 640, 640))]


def make_volume(path: Path, shape: tuple[int, int, int]) -> Path:
    """Write an uncompressed int16 NIfTI slab by slab (a CT-like gradient plus noise)."""
    if path.exists():
        return path
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    affine = np.diag([0.1, 0.1, 0.1, 1.0])
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    rng = np.random.default_rng(0)
    partial = path.with_suffix(".part")
    with partial.open("wb") as target:
        target.write(header.binaryblock + b"\x00" * 4)
        ramp = np.linspace(-1000, 1000, shape[0], dtype=np.float32)[:, None]
        for _z in range(shape[2]):
            noise = rng.normal(0, 40, size=(shape[0], shape[1])).astype(np.float32)
            target.write((ramp + noise).astype(np.int16).tobytes(order="F"))
    partial.rename(path)
    return path


def ensure_database(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin_url = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def manage(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set size) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def multipart_body(
    path: Path, fields: dict[str, str], boundary: str
) -> tuple[list[bytes], int, Iterator[bytes]]:
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def pieces() -> Iterator[bytes]:
        yield head
        with path.open("rb") as source:
            while piece := source.read(PIECE_BYTES):
                yield piece
        yield tail

    return [head, tail], len(head) + path.stat().st_size + len(tail), pieces()


def upload(port: int, token: str, path: Path, mouse: str) -> tuple[float, dict]:
    boundary = uuid.uuid4().hex
    fields = {"study": "Bench", "mouse": mouse, "time_point": "0h", "modality": "native_ct"}
    _, length, body = multipart_body(path, fields, boundary)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    connection.request(
        "POST",
        "/api/scans/",
        body=body,
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(length),
            "Authorization": f"Token {token}",
        },
    )
    response = connection.getresponse()
    answer = json.loads(response.read() or b"{}")
    seconds = time.perf_counter() - started
    if response.status != 201:
        raise RuntimeError(f"upload of {path.name} answered {response.status}: {answer}")
    return seconds, answer


def _request(
    port: int, token: str, method: str, url: str, body: bytes, content_type: str, **headers: str
) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request(
        method,
        url,
        body=body,
        headers={"Content-Type": content_type, "Authorization": f"Token {token}", **headers},
    )
    response = connection.getresponse()
    answer = json.loads(response.read() or b"{}")
    connection.close()
    if response.status not in (200, 201):
        raise RuntimeError(f"{method} {url} answered {response.status}: {answer}")
    return answer


def resumable_upload(port: int, token: str, path: Path, mouse: str) -> tuple[float, float, dict]:
    """Create, send the file in 8 MiB chunks (hashed by the client on the way), complete: the total
    seconds, the seconds of ``complete`` alone, and the scan's JSON."""
    size = path.stat().st_size
    started = time.perf_counter()
    created = _request(
        port,
        token,
        "POST",
        "/api/uploads/",
        json.dumps({"filename": path.name, "size_bytes": size}).encode(),
        "application/json",
    )
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        start = 0
        while chunk := source.read(CHUNK_BYTES):
            hasher.update(chunk)
            end = start + len(chunk) - 1
            _request(
                port,
                token,
                "PUT",
                f"/api/uploads/{created['id']}/",
                chunk,
                "application/octet-stream",
                **{"Content-Range": f"bytes {start}-{end}/{size}"},
            )
            start = end + 1
    fields = {"sha256": hasher.hexdigest(), "study": "Bench", "mouse": mouse, "time_point": "0h"}
    completing = time.perf_counter()
    answer = _request(
        port,
        token,
        "POST",
        f"/api/uploads/{created['id']}/complete/",
        json.dumps(fields).encode(),
        "application/json",
    )
    done = time.perf_counter()
    return done - started, done - completing, answer


def wait_for(port: int, process: subprocess.Popen) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/api/structures/")
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare(env: dict[str, str]) -> str:
    """Migrate and empty the database, create the bench user; its API token."""
    manage("migrate", "--noinput", env=env)
    manage("flush", "--noinput", env=env)
    manage(
        "add_lab_member",
        "--lab",
        "Bench lab",
        "--user",
        "bench",
        "--create-user",
        "--password",
        "bench-pass-1",
        env=env,
    )
    return manage("create_api_token", "bench", env=env).split()[-1]


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    wait_for(port, server)
    return server


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def bench_multipart(files: list[tuple[str, Path]], env: dict[str, str], port: int) -> None:
    """The plain upload (``POST /api/scans/``) on the storage ``env`` names."""
    token = prepare(env)
    server_log = OUT / "upload-server.log"
    server = start_server(port, env, server_log)
    try:
        print(f"server pid {server.pid}: peak RSS {peak_rss_mib(server.pid):.0f} MiB before any upload")
        for index, (label, path) in enumerate(files):
            size_mb = path.stat().st_size / 1e6
            cpu_before = cpu_seconds(server.pid)
            seconds, answer = upload(port, token, path, mouse=f"B{index:02d}")
            cpu_used = cpu_seconds(server.pid) - cpu_before
            grid = "x".join(map(str, answer["shape"]))
            print(
                f"{label:>6} ({size_mb:.0f} MB, grid {grid}): {size_mb / seconds:.0f} MB/s ({seconds:.2f} s), "  # noqa: E501
                f"server peak RSS {peak_rss_mib(server.pid):.0f} MiB"
            )
            checks = [line for line in server_log.read_text().splitlines() if "data checked" in line]
            print(f"        server: {checks[-1].split(': ', 1)[-1] if checks else 'no log line'}")
            print(
                f"        server CPU {cpu_used:.2f} s for this upload ({size_mb / cpu_used:.0f} MB per CPU "
                f"second); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
            )
    finally:
        stop_server(server)


def bench_resumable(
    files: list[tuple[str, Path]], env: dict[str, str], port: int, storage: str, s3_pid: int | None = None
) -> None:
    """The resumable upload on the storage ``env`` names, one fresh web process per storage."""
    token = prepare(env)
    server = start_server(port, env, OUT / f"upload-server-{storage}.log")
    peaks = [peak_rss_mib(server.pid)]
    try:
        print(f"[{storage}] web pid {server.pid}: peak RSS {peaks[0]:.0f} MiB before any upload")
        for index, (label, path) in enumerate(files):
            size_mb = path.stat().st_size / 1e6
            cpu_before = cpu_seconds(server.pid)
            s3_cpu_before = cpu_seconds(s3_pid) if s3_pid else 0.0
            client_cpu_before = time.process_time()
            seconds, completing, _answer = resumable_upload(port, token, path, mouse=f"R{index:02d}")
            cpu_used = cpu_seconds(server.pid) - cpu_before
            client_cpu = time.process_time() - client_cpu_before
            peaks.append(peak_rss_mib(server.pid))
            extra = f", S3 server peak RSS {peak_rss_mib(s3_pid):.0f} MiB" if s3_pid else ""
            print(
                f"[{storage}] {label:>6} resumable ({size_mb:.0f} MB): {size_mb / seconds:.0f} MB/s "
                f"({seconds:.2f} s, of which complete {completing:.2f} s), web peak RSS "
                f"{peaks[-1]:.0f} MiB{extra}"
            )
            s3_cpu = f", S3 server {cpu_seconds(s3_pid) - s3_cpu_before:.2f} s" if s3_pid else ""
            print(
                f"        CPU seconds: web {cpu_used:.2f} s ({size_mb / cpu_used:.0f} MB per CPU second)"
                f"{s3_cpu}, client {client_cpu:.2f} s; load average {os.getloadavg()[0]:.1f} on "
                f"{os.cpu_count()} cores"
            )
        # Flat memory: the largest file raises the web process's peak no more than the smallest did.
        growth = ", ".join(f"+{after - before:.0f} MiB" for before, after in itertools.pairwise(peaks))
        print(f"[{storage}] web peak RSS {' -> '.join(f'{p:.0f}' for p in peaks)} MiB (per upload: {growth})")
    finally:
        stop_server(server)


def direct_upload(bucket: Bucket, file: tuple[str, Path], storage: str) -> None:
    """The peer: the same file sent straight to the S3 server by boto3 (``upload_file``, 8 MiB
    parts, 4 at a time), no web process in between: what the server itself allows on this machine."""
    from boto3.s3.transfer import TransferConfig

    label, path = file
    client = bucket.client(config=bucket.storage_options()["client_config"])
    size_mb = path.stat().st_size / 1e6
    started = time.perf_counter()
    client.upload_file(
        str(path),
        bucket.name,
        f"direct/{path.name}",
        Config=TransferConfig(
            multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2, max_concurrency=4
        ),
    )
    seconds = time.perf_counter() - started
    print(
        f"[{storage}] {label:>6} straight to the S3 server with boto3, no web process: "
        f"{size_mb / seconds:.0f} MB/s ({seconds:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="Server port (default: a free one).")
    parser.add_argument(
        "--storage",
        choices=("local", "s3"),
        default="local",
        help="local: the plain upload on local storage; s3: the resumable upload on local storage and "
        "on an S3 server over HTTP (moto, loopback), side by side.",
    )
    parser.add_argument(
        "--s3-server",
        choices=("rclone", "moto", "both"),
        default="both",
        help="With --storage s3: the S3 server on loopback (rclone serve s3, compiled; moto, Python).",
    )
    parser.add_argument(
        "--keep-files", action="store_true", help="Keep the generated NIfTI files in bench/out."
    )
    args = parser.parse_args()
    port = args.port or free_port()

    OUT.mkdir(parents=True, exist_ok=True)
    files = [
        (label, make_volume(OUT / f"bench_{shape[0]}x{shape[1]}x{shape[2]}.nii", shape))
        for label, shape in SIZES
    ]
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    ensure_database(database_url)
    var_dir = Path(tempfile.mkdtemp(prefix="labseg-bench-"))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LABSEG_VAR_DIR": str(var_dir),
        "LABSEG_MEDIA_ROOT": str(var_dir / "media"),
        "LABSEG_SEGMENT_ON_UPLOAD": "false",
        "LABSEG_LOG_LEVEL": "INFO",
        "DJANGO_DEBUG": "true",
    }
    try:
        if args.storage == "local":
            bench_multipart(files, env, port)
            return
        from tests.s3 import RcloneS3Server, S3Server

        bench_resumable(files, env, port, "local")
        # No local media folder on S3: MEDIA_ROOT lies under a plain file.
        (var_dir / "not-a-folder").write_text("")
        servers = {"rclone": RcloneS3Server, "moto": S3Server}
        for kind in servers if args.s3_server == "both" else [args.s3_server]:
            server = servers[kind](var_dir / f"s3-{kind}").start()
            try:
                bucket = server.new_bucket("bench")
                s3_env = {**env, **bucket.env, "LABSEG_MEDIA_ROOT": str(var_dir / "not-a-folder" / "media")}
                assert server.process is not None
                bench_resumable(files, s3_env, port, f"s3-{kind}", s3_pid=server.process.pid)
                print(
                    f"[s3-{kind}] objects in the bucket: {len(bucket.object_names())}; media folder made: "
                    f"{(var_dir / 'not-a-folder' / 'media').exists()}"
                )
                direct_upload(bucket, files[-1], f"s3-{kind}")
            finally:
                server.stop()
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)
        if not args.keep_files:
            for _, path in files:
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
