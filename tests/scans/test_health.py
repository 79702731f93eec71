"""Health endpoints: liveness always, readiness per dependency (database, broker, storage)."""

from __future__ import annotations

from django.test import Client


def test_liveness_and_readiness_answer_without_a_login(db, media_root, settings) -> None:
    client = Client()

    alive = client.get("/healthz")
    ready = client.get("/readyz")

    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.json()
    assert {name for name, check in ready.json()["checks"].items() if check["ok"]} == {
        "database",
        "broker",
        "storage",
    }
    assert not list((media_root / "health").iterdir())  # the storage probe cleans up


def test_readiness_says_which_dependency_is_down(db, media_root, settings) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # a real address where nothing listens

    ready = Client().get("/readyz")

    checks = ready.json()["checks"]
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    assert checks["broker"]["ok"] is False and "Error" in checks["broker"]["error"]
    assert checks["database"]["ok"] is True and checks["storage"]["ok"] is True
