"""API_KEYS_FILE follows the file while the server runs (a rotated Kubernetes Secret), and a bad new file
keeps the last good keys instead of locking every client out."""

from __future__ import annotations

import os
import time

import pytest
import requests

from conftest import GunicornServer, TestConfig, json_log_lines
from service import auth, create_app


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def file_keys_client(path):
    class FileKeys(TestConfig):
        API_KEYS = "fixed"
        API_KEYS_FILE = str(path)

    return create_app(FileKeys).test_client()


def rewrite(path, text: str) -> None:
    """Rewrite in place, and make sure the signature changes even on a coarse-mtime file system."""
    before = os.stat(path).st_mtime_ns
    path.write_text(text)
    if os.stat(path).st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def status(client, key: str) -> int:
    return client.get("/v1/models", headers=bearer(key)).status_code


def test_a_changed_key_file_takes_effect_and_a_bad_one_keeps_the_last_good_keys(tmp_path, monkeypatch, capsys):
    secret = tmp_path / "keys"
    secret.write_text("old-key\n")
    client = file_keys_client(secret)
    monkeypatch.setattr(auth, "RELOAD_INTERVAL_SECONDS", 0.0)  # look at the file on every request
    assert (status(client, "old-key"), status(client, "new-key"), status(client, "fixed")) == (200, 401, 200)

    rewrite(secret, "# rotated\nnew-key\n")
    assert (status(client, "old-key"), status(client, "new-key"), status(client, "fixed")) == (401, 200, 200)

    for bad in ("", "# only a comment\n", "has space\n"):
        rewrite(secret, bad)
        assert (status(client, "new-key"), status(client, "old-key")) == (200, 401), repr(bad)
    secret.unlink()
    assert status(client, "new-key") == 200
    logged = [line for line in json_log_lines(capsys.readouterr().out) if line["logger"] == "gradsvc.auth"]
    errors = [line["message"] for line in logged if line["level"] == "ERROR"]
    assert len(errors) == 4 and all("keeping the 2 keys loaded before" in e for e in errors), errors
    assert not any("new-key" in e for e in errors)  # keys are never logged

    secret.write_text("third\n")
    assert (status(client, "third"), status(client, "new-key")) == (200, 401)


def test_the_key_file_is_looked_at_no_more_than_once_a_second(tmp_path):
    secret = tmp_path / "keys"
    secret.write_text("old-key\n")
    api_keys = auth.ApiKeys("", str(secret))
    rewrite(secret, "new-key\n")
    assert api_keys.current() == ("old-key",)  # just loaded: no stat() for this request
    api_keys.checked_at -= auth.RELOAD_INTERVAL_SECONDS
    assert api_keys.current() == ("new-key",)


def statuses(url: str, key: str, n: int) -> set[int]:
    """Status codes of n requests with this key (every request a new connection: both workers answer some)."""
    return {requests.get(url + "/v1/models", headers=bearer(key), timeout=10).status_code for _ in range(n)}


def wait_for(url: str, good: str, refused: str, seconds: float = 20, tries: int = 200) -> None:
    """Until 12 requests in a row accept `good` and refuse `refused`; bounded in time and count."""
    deadline = time.monotonic() + seconds
    for _ in range(tries):
        if statuses(url, good, 6) == {200} and statuses(url, refused, 6) == {401}:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    pytest.fail(f"{good!r} not accepted and {refused!r} not refused within {seconds}s")


@pytest.mark.live
@pytest.mark.slow
def test_live_server_follows_a_rotated_secret_without_a_restart(tmp_path):
    """A Kubernetes Secret volume: keys -> ..data/keys, ..data -> a timestamped directory swapped atomically."""
    mount = tmp_path / "secret"
    (mount / "v1").mkdir(parents=True)
    (mount / "v1" / "keys").write_text("old-key\n")
    (mount / "..data").symlink_to("v1")
    (mount / "keys").symlink_to("..data/keys")

    def publish(version: str, text: str) -> None:
        (mount / version).mkdir()
        (mount / version / "keys").write_text(text)
        (mount / "..data_tmp").symlink_to(version)
        os.replace(mount / "..data_tmp", mount / "..data")

    log = tmp_path / "server.log"
    server = GunicornServer(workers=2, env={"API_KEYS_FILE": str(mount / "keys")}, log_path=log).start()
    try:
        pids = set(server.worker_pids())
        assert statuses(server.url, "old-key", 6) == {200} and statuses(server.url, "new-key", 6) == {401}
        publish("v2", "new-key\n")
        wait_for(server.url, "new-key", "old-key")

        publish("v3", "bad key with spaces\n")  # a broken update: the last good key keeps working
        time.sleep(1.5)
        assert statuses(server.url, "new-key", 12) == {200}
        assert statuses(server.url, "old-key", 4) == {401}

        publish("v4", "third-key\n")
        wait_for(server.url, "third-key", "new-key")
        assert set(server.worker_pids()) == pids  # no worker was restarted for any of it
    finally:
        server.stop()
    errors = [line for line in json_log_lines(log.read_text()) if line["logger"] == "gradsvc.auth"]
    assert errors and all(e["level"] == "ERROR" and "keeping the 1 keys" in e["message"] for e in errors), errors
