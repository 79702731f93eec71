"""Upload throughput and server memory: a 50 MB and a 500 MB NIfTI through ``POST /api/scans/``.

Starts the real server (``manage.py runserver --noreload``, one process) against PostgreSQL,
streams each generated ``.nii`` (uncompressed int16) as a multipart body from disk (the client
never holds the file in memory either), and prints MB/s (file bytes / seconds until the 201
answer, validation and storage included) and the server's peak resident memory (VmHWM) after
each upload. Flat memory means the peak after 500 MB is about the peak after 50 MB.

Usage: ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/labseg_bench .venv/bin/python bench/upload.py``
(the database is created when missing and emptied first; segmentation on upload is switched off).
"""

from __future__ import annotations

import argparse
import http.client
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
from urllib.parse import urlparse

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/labseg_bench"
PIECE_BYTES = 1024**2
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="Server port (default: a free one).")
    parser.add_argument(
        "--keep-files", action="store_true", help="Keep the generated NIfTI files in bench/out."
    )
    args = parser.parse_args()
    if not args.port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.port = probe.getsockname()[1]

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
    token = manage("drf_create_token", "bench", env=env).split()[2]
    server_log = OUT / "upload-server.log"
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{args.port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=server_log.open("wb"),
    )
    try:
        wait_for(args.port, server)
        print(f"server pid {server.pid}: peak RSS {peak_rss_mib(server.pid):.0f} MiB before any upload")
        for index, (label, path) in enumerate(files):
            size_mb = path.stat().st_size / 1e6
            cpu_before = cpu_seconds(server.pid)
            seconds, answer = upload(args.port, token, path, mouse=f"B{index:02d}")
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
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(var_dir, ignore_errors=True)
        if not args.keep_files:
            for _, path in files:
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
