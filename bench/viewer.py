"""Viewer speed: time from navigation to the first frame drawn with the label overlay.

For a 40 MB scan (192x192x520 int16, the tumor database's grid) and a 2 GB scan (1024^3 int16,
served through the downsampled preview), each with a stored prediction (the phantom's own label
map, ``tests/demo_scan.py``), this starts the real server (``manage.py runserver --noreload``) on
its own PostgreSQL database, lets the server make each scan's preview once (timed and printed apart: it is
cached in storage), then opens the viewer in Debian's headless Chromium several times, each in a
fresh browser context (empty HTTP cache), and reads ``window.labsegViewer.firstFrameMs``
(``performance.now()`` when the first frame with the overlay was drawn; its origin is the
navigation start). The first navigation of each scan runs in a browser whose GPU process has not
drawn WebGL yet; it is printed apart ("cold browser") from the median of the runs after it.
Chromium renders WebGL in software here (no GPU), so these are upper bounds.

Usage::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/labseg_viewer_bench .venv/bin/python bench/viewer.py
    .venv/bin/python bench/viewer.py --skip-2gb --runs 5

Targets: 40 MB <= 1.5 s, 2 GB through the preview <= 3 s. Files are kept under ``bench/out/viewer``
(about 8 GB with the 2 GB scan) so a second run skips writing them.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the project's packages are importable
from tests.chromium import launch  # noqa: E402

OUT = REPO / "bench" / "out" / "viewer"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/labseg_viewer_bench"
USER, PASSWORD = "bench-viewer", "labseg-bench-123"
#: (label, grid, voxel size in mm): 192x192x520 int16 = 38 MB; 1024^3 int16 = 2.1 GB.
SCANS = [("40 MB", (192, 192, 520), 0.21), ("2 GB", (1024, 1024, 1024), 0.035)]
TARGET_S = {"40 MB": 1.5, "2 GB": 3.0}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment() -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        "LABSEG_MEDIA_ROOT": str(OUT / "media"),
        "LABSEG_VAR_DIR": str(OUT / "var"),
        "LABSEG_SEGMENT_ON_UPLOAD": "false",
        "DJANGO_SETTINGS_MODULE": "labseg.settings",
        "DJANGO_ALLOW_ASYNC_UNSAFE": "true",
    }
    os.environ.update(env)
    return env


def _prepare_database(env: dict[str, str]) -> None:
    """Create the bench database when missing, migrate it and empty the rows this bench makes."""
    import psycopg

    url = env["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        if not admin.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            admin.execute(f'create database "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env, check=True)


def _seed(label: str, shape: tuple[int, int, int], spacing_mm: float) -> int:
    """Write the phantom once, upload it through the real upload service, store its prediction."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from labs.models import Lab, Membership
    from scans.models import Scan
    from scans.services import register_scan
    from tests.demo_scan import add_prediction, write_phantom

    user, _ = get_user_model().objects.get_or_create(username=USER)
    user.set_password(PASSWORD)
    user.save()
    lab, _ = Lab.objects.get_or_create(name="Viewer bench lab")
    Membership.objects.get_or_create(lab=lab, user=user, defaults={"role": "admin"})
    tag = "x".join(map(str, shape))
    scan_path, labels_path, unc_path = (OUT / f"{kind}_{tag}.nii" for kind in ("CT", "labels", "uncertainty"))
    existing = Scan.objects.filter(lab=lab, original_filename=scan_path.name).first()
    if (
        existing is not None
        and existing.predictions.exists()
        and existing.file.storage.exists(existing.file.name)
    ):
        return existing.pk
    if existing is not None:  # left half-made by an interrupted run, or its files were deleted
        existing.delete()
    if not scan_path.exists():
        started = time.perf_counter()
        write_phantom(scan_path, labels_path, unc_path, shape=shape, spacing_mm=spacing_mm)
        print(f"{label}: wrote the phantom in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    scan = register_scan(
        lab=lab,
        uploaded_file_path_or_file=scan_path,
        original_filename=scan_path.name,
        study_name="Viewer bench",
        mouse_identifier=f"B{tag.replace('x', '')[:8]}",
        time_point_label="0h",
        user=user,
    )
    add_prediction(scan=scan, labels_path=labels_path, uncertainty_path=unc_path)
    size_mb = scan_path.stat().st_size / 1e6
    print(f"{label}: registered {size_mb:.0f} MB in {time.perf_counter() - started:.0f} s", flush=True)
    return scan.pk


def _start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = (OUT / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/login/", timeout=2)
            return server, base
        except OSError:
            time.sleep(0.3)
    server.terminate()
    raise SystemExit("the server did not start; see bench/out/viewer/server.log")


def _measure(browser: object, base: str, state: dict, scan_id: int, runs: int) -> list[float]:
    """``1 + runs`` navigations to the viewer, each in a fresh context (empty HTTP cache);
    first-frame times in s. The first is the browser's first WebGL page (GPU process start,
    shader compilation) and is returned first, apart from the ``runs`` that follow."""
    times = []
    for _ in range(1 + runs):
        context = browser.new_context(viewport={"width": 1440, "height": 900}, storage_state=state)  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(f"{base}/scans/{scan_id}/")
        page.wait_for_function(
            "window.labsegViewer && (window.labsegViewer.firstFrameMs || window.labsegViewer.errors.length)",
            timeout=120_000,
        )
        errors = page.evaluate("window.labsegViewer.errors")
        if errors or not page.evaluate("window.labsegViewer.overlayDrawn"):
            raise SystemExit(f"the viewer failed on scan {scan_id}: {errors}")
        times.append(page.evaluate("window.labsegViewer.firstFrameMs") / 1000.0)
        context.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="navigations per scan (default 3)")
    parser.add_argument("--skip-2gb", action="store_true", help="only the 40 MB scan")
    parser.add_argument("--preview-voxels", type=int, help="the server's LABSEG_PREVIEW_MAX_VOXELS")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.preview_voxels:
        os.environ["LABSEG_PREVIEW_MAX_VOXELS"] = str(args.preview_voxels)
    env = _environment()
    _prepare_database(env)
    sizes = SCANS[:1] if args.skip_2gb else SCANS
    scan_ids = {label: _seed(label, shape, spacing) for label, shape, spacing in sizes}
    server, base = _start_server(env)
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = launch(playwright)
            login = browser.new_context()
            page = login.new_page()
            page.goto(f"{base}/login/")
            page.fill("#id_username", USER)
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            state = login.storage_state()
            header = f"{'scan':>6} {'preview made (once)':>20} {'cold browser':>13}"
            print(f"{header} {'first frame (median, runs)':>28}")
            for label, scan_id in scan_ids.items():
                # The preview is made on the first request and cached in storage: time it apart.
                started = time.perf_counter()
                for key in ("ct", *(f"pred-{p}" for p in _prediction_ids(scan_id))):
                    page.request.get(f"{base}/scans/{scan_id}/layers/{key}.nii.gz", timeout=0)
                made_s = time.perf_counter() - started
                cold, *times = _measure(browser, base, state, scan_id, args.runs)
                median = statistics.median(times)
                verdict = "ok" if median <= TARGET_S[label] else "MISSED"
                runs = ", ".join(f"{t:.2f}" for t in times)
                target = TARGET_S[label]
                print(
                    f"{label:>6} {made_s:>18.1f} s {cold:>11.2f} s {median:>8.2f} s ({runs})"
                    f"  target <= {target} s: {verdict}"
                )
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)


def _prediction_ids(scan_id: int) -> list[int]:
    from segmentation.models import Prediction

    return list(Prediction.objects.filter(scan_id=scan_id).values_list("pk", flat=True))


if __name__ == "__main__":
    main()
