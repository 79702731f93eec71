"""Scans per hour as workers go from 1 to 2, on local storage and on S3, with the per-stage costs.

Each configuration gets a fresh lab and storage, ``--scans`` phantom scans (``inference.phantom``,
the committed default models: organs + tumor, 2 jobs per scan) stored through the upload service,
then ``--workers`` worker hosts (``tests/fleet/fleet.py``: each its own network namespace where the
machine allows it, private temp/var/media folders; PostgreSQL, a private Redis and, for S3, a moto
S3 server over TCP) drain the queue. The clock runs from sending the jobs (workers already up) to
the last job finished; scans/hour = scans / that time. The per-stage seconds are the workers' own
``stage_seconds`` of every job (download, the pipeline's stages, upload), so the figures say where a
worker's time goes; the model beyond the measured workers uses them (see ``model``).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/labseg_bench \\
        python bench/throughput.py [--scans 4] [--workers 1 2] [--storage local s3] [--json out.json]

The database named in DATABASE_URL is created when missing and migrated; its tables are the bench's.
Workers run ONNX Runtime on 1 thread each (LABSEG_INFERENCE_THREADS=1), one job at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "labseg.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/labseg_bench")
os.environ.setdefault("LABSEG_SEGMENT_ON_UPLOAD", "false")

#: Stages that move bytes between the worker and storage (shared by every worker); the rest is the
#: worker's own CPU.
TRANSFER_STAGES = ("download", "upload")


def ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def write_scans(folder: Path, n: int, spacing_mm: float) -> list[Path]:
    import nibabel as nib

    from inference.phantom.generator import generate_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"phantom{i}-{spacing_mm}.nii.gz"
        if not path.exists():
            ct = generate_phantom(500 + i, spacing_mm=spacing_mm, n_annotators=1).ct
            nib.save(nib.Nifti1Image(ct, np.diag([spacing_mm] * 3 + [1.0])), str(path))
        paths.append(path)
    return paths


def run_config(
    *, storage: str, n_workers: int, scans: list[Path], root: Path, broker: Any, s3: Any
) -> dict[str, Any]:
    from django.test.utils import override_settings
    from django.utils import timezone

    from scans.services import register_scan
    from segmentation import services
    from segmentation.models import InferenceJob
    from tests.factories import LabFactory, member_of
    from tests.fleet.fleet import Fleet

    tag = f"{storage}-{n_workers}w-{int(time.time())}"
    media = root / f"media-{tag}"
    media.mkdir(parents=True)
    if storage == "s3":
        bucket = s3.new_bucket()
        default = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": bucket.storage_options()}
        fleet_args: dict[str, Any] = {"storage_env": bucket.env, "s3_port": s3.port}
    else:
        default = {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(media), "base_url": "/media/"},
        }
        fleet_args = {"shared_media": media}
    from django.conf import settings

    with override_settings(STORAGES={**settings.STORAGES, "default": default}, MEDIA_ROOT=media):
        lab = LabFactory.create(name=f"Throughput {tag}")
        user = member_of(lab)
        started = time.perf_counter()
        stored = [
            register_scan(
                lab=lab,
                uploaded_file_path_or_file=path,
                original_filename=path.name,
                study_name="Throughput",
                mouse_identifier=f"M{i:02}",
                time_point_label="0h",
                user=user,
            )
            for i, path in enumerate(scans)
        ]
        store_s = time.perf_counter() - started
        fleet = Fleet(
            root / f"fleet-{tag}",
            broker_port=broker.port,
            worker_env={"LABSEG_JOB_TIMEOUT_S": "600", "LABSEG_INFERENCE_THREADS": "1"},
            **fleet_args,
        )
        fleet.root.mkdir()
        names = [f"w{k + 1}" for k in range(n_workers)]
        try:
            for name in names:
                fleet.start(name, queues="cpu")
            fleet.wait_ready(names, timeout_s=120)
            t0 = timezone.now()
            clock = time.perf_counter()
            job_ids = [job.pk for scan in stored for job in services.request_segmentation(scan=scan)]
            while True:
                states = list(InferenceJob.objects.filter(pk__in=job_ids).values_list("state", flat=True))
                if all(s in ("succeeded", "failed", "cancelled") for s in states):
                    break
                if time.perf_counter() - clock > 3600:
                    raise RuntimeError(f"jobs not finished after an hour\n{fleet.workers.logs()}")
                time.sleep(0.5)
        finally:
            fleet.close()
        jobs = list(InferenceJob.objects.filter(pk__in=job_ids))
        failed = [f"job {j.pk}: {j.error}" for j in jobs if j.state != "succeeded"]
        if failed:
            raise RuntimeError("; ".join(failed))
        end = max(j.finished_at for j in jobs if j.finished_at)
        wall_s = (end - t0).total_seconds()
        stages: dict[str, list[float]] = {}
        per_scan: dict[int, float] = {}
        for job in jobs:
            for stage, value in (job.stage_seconds or {}).items():
                if isinstance(value, int | float) and stage != "total":
                    stages.setdefault(stage, []).append(float(value))
            if job.started_at and job.finished_at:
                seconds = (job.finished_at - job.started_at).total_seconds()
                per_scan[job.scan_id] = per_scan.get(job.scan_id, 0.0) + seconds
        hosts = sorted({j.worker_host.split("@")[0] for j in jobs})
        return {
            "storage": storage,
            "workers": n_workers,
            "isolation": fleet.isolation,
            "scans": len(stored),
            "jobs": len(jobs),
            "store_s": round(store_s, 2),
            "wall_s": round(wall_s, 2),
            "scans_per_hour": round(3600 * len(stored) / wall_s, 1),
            "worker_s_per_scan": round(statistics.mean(per_scan.values()), 2),
            # Seconds per scan (both jobs summed) in each stage, averaged over the scans.
            "stage_s_per_scan": {
                k: round(sum(v) / len(stored), 3)
                for k, v in sorted(stages.items(), key=lambda kv: -sum(kv[1]))
            },
            "hosts_used": hosts,
        }


def model(row: dict[str, Any], cores: list[int]) -> dict[int, float]:
    """Scans/hour with k workers, each on a core of its own, from one run's per-stage costs.

    A scan costs ``worker_s_per_scan`` seconds of one worker; its CPU stages scale with workers,
    while the transfer stages (download/upload) use storage that all workers share: with ``T``
    seconds of transfer per scan, storage alone caps the fleet at 3600 / T scans per hour when the
    transfers of all workers are served one at a time (the pessimistic bound; a parallel store
    such as S3 raises it). X(k) = min(k * 3600 / S, 3600 / T).
    """
    total = float(row["worker_s_per_scan"])
    transfer = sum(float(row["stage_s_per_scan"].get(s, 0.0)) for s in TRANSFER_STAGES)
    cap = 3600 / transfer if transfer > 0 else float("inf")
    return {k: round(min(k * 3600 / total, cap), 1) for k in cores}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--storage", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    parser.add_argument("--spacing-mm", type=float, default=0.21, help="phantom voxel size")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from segmentation import services
    from tests.s3 import S3Server
    from tests.workers import PrivateRedis, reset_celery_pools

    services.sync_models()
    root = Path(tempfile.mkdtemp(prefix="labseg-throughput-"))
    scans = write_scans(REPO / "bench" / "out" / "throughput", args.scans, args.spacing_mm)
    print(f"{len(scans)} phantom scans, {sum(p.stat().st_size for p in scans) / 1e6:.1f} MB in all")
    print(f"models: {', '.join(str(mv) for mv in services.default_model_versions())}")
    load_start = os.getloadavg()[0]
    print(f"CPUs: {os.cpu_count()}, load average at the start: {load_start:.1f}")
    broker = PrivateRedis(root)
    broker.start()
    os.environ["CELERY_BROKER_URL"] = broker.url
    reset_celery_pools()
    s3 = S3Server(root / "s3").start() if "s3" in args.storage else None
    rows = []
    try:
        for storage in args.storage:
            for n in args.workers:
                row = run_config(storage=storage, n_workers=n, scans=scans, root=root, broker=broker, s3=s3)
                rows.append(row)
                stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stage_s_per_scan"].items())
                print(
                    f"\n{storage:5} {n} worker(s): {row['scans_per_hour']:8.1f} scans/hour "
                    f"({row['scans']} scans in {row['wall_s']:.1f} s; hosts used {row['hosts_used']}); "
                    f"a scan costs {row['worker_s_per_scan']:.1f} worker-seconds; storing the uploads "
                    f"took {row['store_s']:.1f} s\n      stages per scan (s): {stages}"
                )
    finally:
        broker.stop()
        if s3 is not None:
            s3.stop()
        shutil.rmtree(root, ignore_errors=True)
    load_end = os.getloadavg()[0]
    print(f"\nisolation: {rows[0]['isolation'] if rows else '-'}")
    print(f"load average at the end: {load_end:.1f} on {os.cpu_count()} CPUs")
    cores = [1, 2, 4, 8, 16, 32]
    models = {}
    for row in rows:
        if row["workers"] == min(args.workers):
            models[row["storage"]] = model(row, cores)
            print(
                f"model ({row['storage']}, from the {row['workers']}-worker run's stage costs), scans/hour "
                "with k workers on k cores: "
                + ", ".join(f"k={k}: {v}" for k, v in models[row["storage"]].items())
            )
    for storage in args.storage:
        by_n = {r["workers"]: r["scans_per_hour"] for r in rows if r["storage"] == storage}
        if 1 in by_n and 2 in by_n:
            print(
                f"{storage}: 2 workers / 1 worker = {by_n[2] / by_n[1]:.2f}x (ideal 2.00x with 2 free cores)"
            )
    if args.json:
        summary = {
            "rows": rows,
            "model": models,
            "load_average": [load_start, load_end],
            "cpus": os.cpu_count(),
        }
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
