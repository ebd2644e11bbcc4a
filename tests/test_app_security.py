"""The annotation server's security rules: only files under IMAGES_DIR, by id (path traversal
attempts fail), Host checks against DNS rebinding, a token off loopback, same-origin changes,
request size limits."""

from __future__ import annotations

import os

import pytest
from app_support import copy_images, make_client
from fastapi.testclient import TestClient

from steadysam.app.launch import open_project
from steadysam.app.security import is_loopback, loopback_hosts
from steadysam.app.server import create_app, guarded

SECRET = b"top secret, outside IMAGES_DIR"


@pytest.fixture
def project(tmp_path):
    images = copy_images(tmp_path / "images", ("GrabCut/106024",))
    (tmp_path / "secret.txt").write_bytes(SECRET)
    # A link inside IMAGES_DIR that leads out of it, named like an image.
    os.symlink(tmp_path / "secret.txt", images / "evil.jpg")
    p = open_project(images, tmp_path / "p.sqlite", None, prefetch=False)
    yield p
    p.store.close()


def _no_secret(r) -> None:
    assert SECRET not in r.content


@pytest.mark.parametrize(
    "path",
    [
        "/api/images/../../secret.txt",
        "/api/images/..%2F..%2Fsecret.txt/file",
        "/api/images/%2e%2e/file",
        "/api/images/1%2F..%2F..%2Fsecret.txt/file",
        "/static/../../../secret.txt",
        "/static/..%2F..%2F..%2Fsecret.txt",
        "/static/%2e%2e/%2e%2e/store.py",
        "/../secret.txt",
        "/api/images/-1/file",
        "/api/images/99/file",
    ],
)
def test_path_traversal_never_serves_other_files(project, path):
    c = make_client(project)
    r = c.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    _no_secret(r)
    assert b"import sqlite3" not in r.content  # no package source either


def test_links_out_of_images_dir_are_not_listed_or_served(project, tmp_path):
    c = make_client(project)
    names = [im["file_name"] for im in c.get("/api/images").json()]
    assert names == ["106024.jpg"]
    # Even a database edited by hand to point outside is refused.
    with project.store.transaction() as db:
        db.execute("INSERT INTO images (file_name, width, height) VALUES ('../secret.txt', 1, 1)")
        db.execute("INSERT INTO images (file_name, width, height) VALUES ('evil.jpg', 1, 1)")
    ids = {im["file_name"]: im["id"] for im in c.get("/api/images").json()}
    for name in ("../secret.txt", "evil.jpg"):
        r = c.get(f"/api/images/{ids[name]}/file")
        assert r.status_code == 403 and "outside IMAGES_DIR" in r.json()["error"]
        _no_secret(r)
    ok = c.get(f"/api/images/{ids['106024.jpg']}/file")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize("host", ["evil.example:8765", "127.0.0.1:9999", "localhost", "", "x"])
def test_dns_rebinding_hosts_refused(project, host):
    c = make_client(project)
    r = c.get("/api/images", headers={"host": host})
    assert r.status_code == 421 and "not this server" in r.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "[::1]:8765"])
def test_loopback_hosts_accepted(project, host):
    c = make_client(project)
    assert c.get("/api/images", headers={"host": host}).status_code == 200


def test_cross_origin_changes_refused(project):
    c = make_client(project)
    r = c.post("/api/categories", json={"name": "x"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    r = c.post("/api/categories", json={"name": "x"}, headers={"origin": "null"})
    assert r.status_code == 403
    r = c.post("/api/categories", json={"name": "x"}, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    assert [cat["name"] for cat in c.get("/api/categories").json()] == ["object"]
    r = c.post("/api/categories", json={"name": "x"}, headers={"origin": "http://127.0.0.1:8765"})
    assert r.status_code == 201


def test_token_required_off_loopback(project):
    assert not is_loopback("0.0.0.0") and is_loopback("127.0.0.1") and is_loopback("::1")
    app = guarded(create_app(project), None, "s3cret-token")
    c = TestClient(app, base_url="http://192.168.1.5:8765", raise_server_exceptions=False)
    r = c.get("/api/images")
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert c.get("/api/images?token=wrong").status_code == 401
    assert c.get("/api/images", headers={"x-steadysam-token": "s3cret-token"}).status_code == 200
    # The page opened with ?token= sets a cookie; later requests go with the cookie only.
    r = c.get("/?token=s3cret-token")
    assert r.status_code == 200 and "steadysam_token" in r.headers["set-cookie"]
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    assert c.get("/api/images").status_code == 200


def test_request_size_limit(project):
    c = make_client(project)
    big = b'{"name": "' + b"x" * (3 << 20) + b'"}'
    r = c.post("/api/categories", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: counted while it streams
        yield b'{"name": "'
        for _ in range(40):
            yield b"y" * (100 << 10)
        yield b'"}'

    r = c.post("/api/categories", content=chunks(), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    assert [cat["name"] for cat in c.get("/api/categories").json()] == ["object"]


def test_default_bind_is_loopback_only(project):
    from steadysam.app.launch import Server

    s = Server(project, "127.0.0.1", 0)
    try:
        assert s.token is None and "token" not in s.url
        assert s.app.allowed_hosts == loopback_hosts(s.port)
    finally:
        s.close()
    s = Server(project, "0.0.0.0", 0)
    try:
        assert s.token and s.url.endswith(f"?token={s.token}")
    finally:
        s.close()
