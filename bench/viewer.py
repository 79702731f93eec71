"""Viewer speed as the eye sees it: when the canvas first shows the scan with its overlay, and when
the page first answers input with no long task after it.

For a 40 MB scan (192x192x520 int16, the tumor database's grid) and a large scan served through its
preview (1024^3 int16 = 2.1 GB by default; ``--large-shape`` scales it), each with a stored prediction
(the phantom's own label map, ``tests/demo_scan.py``), and the review page of the 40 MB scan with
three annotators, this starts the real server (``manage.py runserver --noreload``) on its own
PostgreSQL database and opens each page in Debian's headless Chromium ``--runs`` times, each in a
fresh browser context (empty HTTP cache), after one warm-up navigation per page (the browser's first
WebGL page starts the GPU process and compiles shaders; printed apart as "cold browser").

Per navigation:

- **on screen**: Chrome's screencast (``Page.startScreencast``) records every frame the compositor
  shows, with its wall-clock time; the first frame whose canvas shows the scan's grey levels and the
  overlay's colours (at least half as many of each as a screenshot taken once the page settled) is
  the first frame as the eye sees it, timed from the navigation start (``performance.timeOrigin``).
- **answers input**: a ``PerformanceObserver`` of ``longtask`` entries, registered before the page's
  own scripts; the time is the end of the last task over 200 ms (or the first frame, if later),
  watched until the page settled (3 s without a long task once the viewer's progressive load ended).
- **longest task** over the whole load, and the old metric ``window.labsegViewer.firstFrameMs``
  (when the viewer's code had drawn its first frame) beside them.
- **steps** of the first frame, from the page's own marks (medians): its module running, WebGL
  set up (NiiVue's shaders compiled), the first level's volumes read, its textures built and drawn.

``--trace`` adds one navigation per page recorded with Chrome's tracing (the timeline, the JavaScript
sampling profiler and the GPU process), kept as ``bench/out/viewer/trace_<page>.json`` (open it in
chrome://tracing or Perfetto), and prints every task over 100 ms with what filled it: trace events
(``Commit`` / ``GLES2::ReadPixels``: the compositor reading the WebGL canvas back, waiting for the
GPU's work; ``RunMicrotasks``: JavaScript) and the functions the profiler sampled most in it
(``(idle)`` inside a task is the main thread waiting for the GPU process).

Chromium renders WebGL in software here (no GPU) and the 2 CPU cores may be shared: these are
upper bounds; the figures printed are medians.

Usage::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/labseg_viewer_bench .venv/bin/python bench/viewer.py
    .venv/bin/python bench/viewer.py --skip-large --runs 5
    .venv/bin/python bench/viewer.py --large-shape 512,512,512   # a scaled "large" scan

Targets (issue 21): 40 MB on screen <= 1.5 s and answering input <= 2.0 s; the large scan through its
preview <= 3 s; the review page on screen <= 2 s with no task over 500 ms. Files are kept under
``bench/out/viewer`` (about 8 GB with the 2 GB scan) so a second run skips writing them; previews
are made when a scan is registered (timed in the "registered" line).
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the project's packages are importable
from tests.chromium import launch  # noqa: E402

OUT = REPO / "bench" / "out" / "viewer"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/labseg_viewer_bench"
USER, PASSWORD = "bench-viewer", "labseg-bench-123"
#: 192x192x520 int16 = 38 MB at 0.21 mm; the large scan's voxel size keeps the mouse's extent.
SMALL_SHAPE, SMALL_SPACING = (192, 192, 520), 0.21
LARGE_SHAPE = (1024, 1024, 1024)
#: Long tasks (ms) that count as "not answering input", and the review page's ceiling.
BLOCKING_MS, REVIEW_LONGEST_MS = 200.0, 500.0
ANNOTATORS = ("A", "B", "C")

# Registered before the page's own scripts: every long task of the load, buffered.
LONG_TASKS = """
window.__bench = { longTasks: [] };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__bench.longTasks.push([e.startTime, e.duration]);
}).observe({ type: "longtask", buffered: true });
"""


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
    """Create the bench database when missing and migrate it."""
    import psycopg

    url = env["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        if not admin.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            admin.execute(f'create database "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env, check=True)


def _seed(label: str, shape: tuple[int, int, int], spacing_mm: float) -> int:
    """Write the phantom once, register it through the real upload service (which makes its
    previews), store its prediction (whose previews are made as it is stored)."""
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
        _make_previews(label, existing)
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
    _make_previews(label, scan)
    return scan.pk


def _make_previews(label: str, scan: Any) -> None:
    """What the worker does when a scan, prediction or annotation is stored (``frontend/apps.py``;
    no worker runs here): every preview level of every layer, timed apart. Stored ones are kept."""
    from frontend import layers

    started = time.perf_counter()
    keys = [row["key"] for row in layers.viewer_layers(scan) if row["kind"] != "consensus"]
    layers.make_previews(scan, keys)
    print(
        f"{label}: previews of {len(keys)} layers ready in {time.perf_counter() - started:.1f} s", flush=True
    )


def _seed_annotators(scan_id: int) -> None:
    """Three annotators of the phantom's tumor (as drawn, one voxel wider, one voxel narrower)."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from inference.structures import BY_NAME
    from review.services import create_annotation
    from scans.models import Scan

    scan = Scan.objects.get(pk=scan_id)
    if scan.annotations.count() >= len(ANNOTATORS):
        return
    tag = "x".join(map(str, scan.shape[:3]))
    image = cast(nib.Nifti1Image, nib.load(str(OUT / f"labels_{tag}.nii")))
    tumor = np.asarray(image.dataobj) == BY_NAME["tumor"].id
    variants = (tumor, ndimage.binary_dilation(tumor), ndimage.binary_erosion(tumor))
    for name, mask in zip(ANNOTATORS, variants, strict=True):
        if scan.annotations.filter(annotator_name=name).exists():
            continue
        path = OUT / f"Annotator_{name}_{tag}.nii.gz"
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), image.affine), str(path))
        create_annotation(
            scan=scan,
            file=path,
            original_filename=path.name,
            annotator_name=name,
            user=scan.uploaded_by,
            structures={"tumor": 1},
        )


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


@dataclass
class Run:
    on_screen_s: float
    answers_s: float
    longest_ms: float
    old_first_frame_s: float | None
    level: str
    marks: dict[str, float]


#: The page's marks of its first frame (``hook.marks``), in the order they happen.
STEPS = (("moduleMs", "module"), ("canvasMs", "WebGL set up"), ("readMs", "read"), ("drawnMs", "drawn"))
#: What --trace records: the renderer's timeline, the JavaScript sampling profiler, the GPU process.
TRACE_CATEGORIES = [
    "devtools.timeline",
    "disabled-by-default-devtools.timeline",
    "v8.execute",
    "disabled-by-default-v8.cpu_profiler",
    "blink.user_timing",
    "gpu",
    "disabled-by-default-gpu.service",
]


def _counts(jpeg: bytes, box: dict[str, float]) -> tuple[int, int]:
    """(scan pixels, overlay pixels) inside the canvas ``box`` of a screenshot or screencast frame:
    grey levels above the background, and saturated colours other than the crosshair's cyan."""
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    left, top = int(box["x"]), int(box["y"])
    crop = np.asarray(
        image.crop((left, top, left + int(box["width"]), top + int(box["height"]))), dtype=np.int16
    )
    high, low = crop.max(axis=2), crop.min(axis=2)
    saturation = (high - low) / np.maximum(high, 1)
    r, g, b = crop[..., 0], crop[..., 1], crop[..., 2]
    cyan = (r < 0.5 * b) & (g > 0.6 * b) & (b > 120)
    grey = (saturation < 0.12) & (high > 45)
    colour = (saturation > 0.45) & (high > 90) & ~cyan
    return int(grey.sum()), int(colour.sum())


def _measure_once(
    browser: Any, base: str, state: dict, url: str, canvas: str, ready: str, trace: Path | None = None
) -> Run:
    """One navigation in a fresh context, with the screencast and the long-task observer on (and
    Chrome's tracing, into ``trace``, when given)."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, storage_state=state)
    context.add_init_script(LONG_TASKS)
    page = context.new_page()
    if trace is not None:
        browser.start_tracing(page=page, categories=TRACE_CATEGORIES)
    frames: list[tuple[float, bytes]] = []
    cdp = context.new_cdp_session(page)

    def on_frame(event: dict[str, Any]) -> None:
        frames.append((float(event["metadata"]["timestamp"]), base64.b64decode(event["data"])))
        cdp.send("Page.screencastFrameAck", {"sessionId": event["sessionId"]})

    cdp.on("Page.screencastFrame", on_frame)
    cdp.send("Page.startScreencast", {"format": "jpeg", "quality": 70, "everyNthFrame": 1})
    page.goto(f"{base}{url}", wait_until="commit")
    page.wait_for_function(ready, timeout=180_000)
    errors = page.evaluate("window.labsegViewer ? window.labsegViewer.errors : []")
    if errors:
        raise SystemExit(f"the page {url} failed: {errors}")
    # Settled: the progressive load ended and 3 s passed without a long task (at most 60 s).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        quiet = page.evaluate(
            """() => {
              const tasks = window.__bench.longTasks;
              const last = tasks.length ? Math.max(...tasks.map(([s, d]) => s + d)) : 0;
              const hook = window.labsegViewer || window.labsegReview || {};
              return (hook.settled !== false) && performance.now() - last > 3000;
            }"""
        )
        if quiet:
            break
    cdp.send("Page.stopScreencast")
    page.wait_for_timeout(200)
    box = page.locator(canvas).bounding_box()
    final_grey, final_colour = _counts(page.screenshot(type="jpeg", quality=70), box)
    origin_ms = page.evaluate("performance.timeOrigin")
    tasks = page.evaluate("window.__bench.longTasks")
    old = page.evaluate("window.labsegViewer ? window.labsegViewer.firstFrameMs : null")
    level = page.evaluate("window.labsegViewer ? window.labsegViewer.level : 'review'")
    marks = page.evaluate("(window.labsegViewer || window.labsegReview || {}).marks || {}")
    if trace is not None:
        trace.write_bytes(browser.stop_tracing())
    context.close()
    on_screen_ms = None
    for stamp, jpeg in sorted(frames):
        grey, colour = _counts(jpeg, box)
        if grey >= 0.5 * final_grey and colour >= max(20, 0.5 * final_colour):
            on_screen_ms = stamp * 1000.0 - origin_ms
            break
    if on_screen_ms is None:
        raise SystemExit(f"no screencast frame of {url} showed the scan with its overlay")
    blocking_ends = [start + duration for start, duration in tasks if duration > BLOCKING_MS]
    answers_ms = max([on_screen_ms, *blocking_ends])
    longest = max((duration for _, duration in tasks), default=0.0)
    return Run(on_screen_ms / 1000, answers_ms / 1000, longest, old / 1000 if old else None, level, marks)


def _long_tasks(trace: dict[str, Any], min_ms: float = 100.0, top: int = 5) -> list[str]:
    """The page's main-thread tasks over ``min_ms`` in a Chrome trace, each with the trace events
    and the sampled JavaScript functions (self time) that filled it."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    # The page's renderer: the process that ran the viewer's scripts (other renderers are Chrome's).
    pids = {e["pid"] for e in events if "/static/" in str(e.get("args", {}).get("data", {}).get("url", ""))}
    main = {key for key, name in threads.items() if name == "CrRendererMain" and key[0] in pids}
    starts = [e["ts"] for e in events if e.get("name") == "navigationStart" and e["pid"] in pids]
    origin = min(starts) if starts else 0
    nodes: dict[tuple[Any, int], dict[str, Any]] = {}
    samples: list[tuple[float, tuple[Any, int]]] = []
    clock: dict[Any, float] = {
        (e["pid"], e["id"]): e["args"]["data"]["startTime"] for e in events if e.get("name") == "Profile"
    }
    for e in events:
        if e.get("name") != "ProfileChunk" or e["pid"] not in pids:
            continue
        key = (e["pid"], e["id"])
        data = e["args"]["data"]
        for node in data.get("cpuProfile", {}).get("nodes", []):
            nodes[(key, node["id"])] = node
        t = clock.get(key, 0.0)
        ids, deltas = data.get("cpuProfile", {}).get("samples", []), data.get("timeDeltas", [])
        for node_id, delta in zip(ids, deltas, strict=False):  # a chunk may end between the two
            t += delta
            samples.append((t, (key, node_id)))
        clock[key] = t

    def name(node_id: tuple[Any, int]) -> str:
        frame = nodes.get(node_id, {}).get("callFrame", {})
        function = frame.get("functionName") or "(anonymous)"
        script = str(frame.get("url", "")).rsplit("/", 1)[-1]
        return f"{function} ({script}:{int(frame.get('lineNumber', -1)) + 1})" if script else function

    tasks = [
        e
        for e in events
        if e.get("ph") == "X"
        and (e["pid"], e["tid"]) in main
        and e.get("name") in ("RunTask", "ThreadControllerImpl::RunTask")
        and e.get("dur", 0) > min_ms * 1000
    ]
    lines = []
    for task in sorted(tasks, key=lambda e: e["ts"]):
        start, end = task["ts"], task["ts"] + task["dur"]
        lines.append(f"  task at {(start - origin) / 1000:.0f} ms: {task['dur'] / 1000:.0f} ms")
        inside: collections.Counter[str] = collections.Counter()
        for e in events:
            if (
                e is not task
                and e.get("ph") == "X"
                and (e["pid"], e["tid"]) == (task["pid"], task["tid"])
                and start <= e["ts"] < end
                and e.get("dur", 0) > 0.2 * task["dur"]
                and e["name"] not in ("RunTask", "ThreadControllerImpl::RunTask")
            ):
                inside[e["name"]] += e["dur"] / 1000
        if inside:
            lines.append("    events: " + ", ".join(f"{n} {ms:.0f} ms" for n, ms in inside.most_common(top)))
        sampled = collections.Counter(name(node) for t, node in samples if start <= t < end)
        total = sum(sampled.values())
        if total:
            per = task["dur"] / 1000 / total
            named = [(n, count) for n, count in sampled.most_common(top + 1) if n != "(root)"][:top]
            lines.append("    sampled: " + ", ".join(f"{n} {count * per:.0f} ms" for n, count in named))
    return lines


VIEWER_READY = (
    "window.labsegViewer && (window.labsegViewer.firstFrameMs || window.labsegViewer.errors.length)"
)
REVIEW_READY = "document.body.dataset.reviewReady === 'true'"


def _measure(
    browser: Any, base: str, state: dict, url: str, canvas: str, ready: str, runs: int, trace: str = ""
) -> list[Run]:
    """A warm-up navigation (the browser's first WebGL page), then ``runs`` cold contexts; with
    ``trace`` (a name), one more, traced, whose long tasks are printed (not counted)."""
    results = [_measure_once(browser, base, state, url, canvas, ready) for _ in range(1 + runs)]
    if trace:
        path = OUT / f"trace_{trace}.json"
        _measure_once(browser, base, state, url, canvas, ready, trace=path)
        print(f"{trace}: tasks over 100 ms in one traced load ({path.relative_to(REPO)})")
        print("\n".join(_long_tasks(json.loads(path.read_bytes())) or ["  none"]), flush=True)
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _report(
    label: str,
    results: list[Run],
    on_screen_target: float,
    answers_target: float | None,
    longest_target: float | None,
) -> None:
    cold, *runs = results
    on_screen = _median([r.on_screen_s for r in runs])
    answers = _median([r.answers_s for r in runs])
    longest = _median([r.longest_ms for r in runs])
    olds = [r.old_first_frame_s for r in runs if r.old_first_frame_s is not None]
    old = f"{_median(olds):.2f} s" if olds else "-"
    verdicts = [f"on screen <= {on_screen_target} s: {'ok' if on_screen <= on_screen_target else 'MISSED'}"]
    if answers_target is not None:
        verdicts.append(f"answering <= {answers_target} s: {'ok' if answers <= answers_target else 'MISSED'}")
    if longest_target is not None:
        verdicts.append(
            f"longest <= {longest_target:.0f} ms: {'ok' if longest <= longest_target else 'MISSED'}"
        )
    print(
        f"{label:<24} {on_screen:>8.2f} s {answers:>8.2f} s {longest:>8.0f} ms {old:>8}"
        f"  level {runs[-1].level}; cold browser {cold.on_screen_s:.2f} s",
        flush=True,
    )
    print(
        f"{'':<24} runs on screen: {', '.join(f'{r.on_screen_s:.2f}' for r in runs)}; "
        f"answering: {', '.join(f'{r.answers_s:.2f}' for r in runs)}; "
        f"longest ms: {', '.join(f'{r.longest_ms:.0f}' for r in runs)}; " + "; ".join(verdicts),
        flush=True,
    )
    steps = [
        f"{title} {_median([r.marks[key] for r in runs]) / 1000:.2f} s"
        for key, title in STEPS
        if all(key in r.marks for r in runs)
    ]
    if steps:
        print(f"{'':<24} first frame's steps: {', '.join(steps)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="cold contexts per page (default 5)")
    parser.add_argument("--skip-large", action="store_true", help="no large scan")
    parser.add_argument(
        "--large-shape", default=",".join(map(str, LARGE_SHAPE)), help="i,j,k of the large scan"
    )
    parser.add_argument("--preview-voxels", type=int, help="the server's LABSEG_PREVIEW_MAX_VOXELS")
    parser.add_argument(
        "--trace", action="store_true", help="one more traced load per page: its long tasks, named"
    )
    parser.add_argument("--only", choices=("viewer", "review", "large"), help="measure one page only")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.preview_voxels:
        os.environ["LABSEG_PREVIEW_MAX_VOXELS"] = str(args.preview_voxels)
    env = _environment()
    _prepare_database(env)
    large = tuple(int(v) for v in args.large_shape.split(","))
    small_id = _seed("40 MB", SMALL_SHAPE, SMALL_SPACING)
    _seed_annotators(small_id)
    _seed("40 MB", SMALL_SHAPE, SMALL_SPACING)  # the annotators' previews
    large_id = None
    if not args.skip_large and args.only in (None, "large"):
        spacing = SMALL_SPACING * SMALL_SHAPE[0] / large[0]
        large_mb = 2 * large[0] * large[1] * large[2] / 1e6
        large_id = _seed(f"{large_mb:.0f} MB", (large[0], large[1], large[2]), spacing)
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
            print(
                f"medians of {args.runs} cold contexts; Chromium's WebGL in software; {os.cpu_count()} CPUs"
            )
            print(f"{'page':<24} {'on screen':>10} {'answering':>10} {'longest':>11} {'old metric':>8}")
            viewer = ("canvas#gl", VIEWER_READY, args.runs)
            wanted = {args.only} if args.only else {"viewer", "review", "large"}
            if "viewer" in wanted:
                trace = "viewer" if args.trace else ""
                results = _measure(browser, base, state, f"/scans/{small_id}/", *viewer, trace=trace)
                _report("40 MB viewer", results, 1.5, 2.0, None)
            if "review" in wanted:
                review = ("canvas#overlay", REVIEW_READY, args.runs)
                trace = "review" if args.trace else ""
                results = _measure(browser, base, state, f"/review/scans/{small_id}/", *review, trace=trace)
                _report("review, 3 annotators", results, 2.0, None, REVIEW_LONGEST_MS)
            if large_id is not None and "large" in wanted:
                trace = "large" if args.trace else ""
                results = _measure(browser, base, state, f"/scans/{large_id}/", *viewer, trace=trace)
                _report(f"{'x'.join(map(str, large))} via preview", results, 3.0, None, None)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
