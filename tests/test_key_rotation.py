"""`rotate-key` while `serve` runs: no row the current key cannot open (issue 11, item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from totp_service.store import crypto
from totp_service.store.sqlite import SqliteStore
from tests.helpers_app import ADMIN_TOKEN, OTHER_BASE32, add_secret, bearer, make_settings, pull, running_service

REPO = Path(__file__).resolve().parent.parent


def test_a_running_service_stops_using_a_key_rotated_away(tmp_path) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "alice@example.com")
    new_key_file = tmp_path / "new.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTP_SERVICE_", "SKYVERN_"))}
    env.update(TOTP_SERVICE_DATA_DIR=str(settings.data_dir), TOTP_SERVICE_MASTER_KEY=settings.master_key or "",
               PYTHONPATH=str(REPO))
    with running_service(settings) as svc, svc.client() as client:
        assert pull(client, "/totp/alice%40example.com", {"task_id": "t"}).status_code == 200
        rotated = subprocess.run([sys.executable, "-m", "totp_service", "rotate-key", "--new-key-file",
                                  str(new_key_file)], env=env, capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0, rotated.stderr
        admin = bearer(ADMIN_TOKEN)
        put = client.put("/v1/secrets/bob", headers=admin, json={"secret": OTHER_BASE32})
        assert put.status_code == 503 and "rotated" in put.json()["detail"]  # never sealed under the old key
        replace = client.put("/v1/secrets/alice@example.com", headers=admin,
                             json={"secret": OTHER_BASE32, "replace": True})
        assert replace.status_code == 503
        answer = pull(client, "/totp/alice%40example.com", {"task_id": "t"})
        assert answer.status_code == 503 and "restart" in answer.json()["detail"]  # not a 500
        assert client.get("/readyz").status_code == 503
    with SqliteStore(settings.database_path, crypto.load_key_file(new_key_file)) as store:
        assert [m.identifier for m in store.list_meta()] == ["alice@example.com"]
        for meta in store.list_meta():  # every row opens under the current key
            store.get_spec(meta.identifier)
