"""Who imports whom: the library imports no Django app, labs sits below every app, and the
annotation lifecycle (review.services) is called by the other apps, never re-implemented by them.

Read from the source with ``ast`` (imports inside functions count too), so nothing is imported.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APPS = ("labs", "scans", "segmentation", "review", "frontend")
PACKAGES = (*APPS, "inference", "labseg")

#: Arrows that run against the layers labs <- scans <- segmentation <- review <- frontend, each in
#: one named file (the allowance is exact: another file with such an import fails). None: a new
#: scan reaches segmentation through scans.signals.scan_registered.
KNOWN_UPWARD: dict[tuple[str, str], set[str]] = {}


def modules(package: str) -> list[Path]:
    return [p for p in sorted((REPO / package).rglob("*.py")) if "migrations" not in p.parts]


def imported(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def arrows() -> dict[tuple[str, str], set[str]]:
    """(importing package, imported package) -> the files that import it."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for package in PACKAGES:
        for path in modules(package):
            for name in imported(path):
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found[(package, top)].add(str(path.relative_to(REPO)))
    return found


def test_the_library_imports_neither_django_nor_any_app():
    for path in modules("inference"):
        tops = {name.split(".")[0] for name in imported(path)}
        assert not tops & {*APPS, "labseg", "django", "rest_framework", "celery"}, path


def test_labs_imports_no_other_app():
    assert not {target for (source, target) in arrows() if source == "labs"} & set(APPS)


def test_scans_imports_nothing_of_review():
    # Before: scans.services.review_annotation and scans.admin called review.services, which
    # called scans.services.register_annotation back. Annotations are now created, reviewed and
    # served (API and admin) by the review app only.
    assert ("scans", "review") not in arrows()


def test_the_apps_form_no_cycle_but_for_the_known_upward_arrows() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for (source, target), files in arrows().items():
        if source in APPS and target in APPS:
            extra = files - KNOWN_UPWARD.get((source, target), set())
            if extra:
                graph[source].add(target)
    state: dict[str, str] = {}

    def visit(app: str, path: list[str]) -> None:
        state[app] = "open"
        for target in graph[app]:
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*path, app, target])}"
            if target not in state:
                visit(target, [*path, app])
        state[app] = "done"

    for app in APPS:
        if app not in state:
            visit(app, [])


def test_only_the_lifecycle_creates_annotations_or_writes_their_trail():
    writers = set()
    for package in APPS:
        for path in modules(package):
            text = path.read_text()
            if "Annotation.objects.create(" in text or "AnnotationTransition.objects.create(" in text:
                writers.add(str(path.relative_to(REPO)))
    assert writers == {"review/services.py"}
