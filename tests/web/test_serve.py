"""`birdlive serve` over HTTP, as a browser or an attacker speaks it (raw requests with http.client, so that `../`
reaches the server as typed): who may bind where, sign-in, CSRF, clip paths kept inside the clip folder, and
bounded requests. The pages in a real browser are test_browser.py."""
from __future__ import annotations

import http.client
import os
import re
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
import pytest
import soundfile as sf

from birdlive.streamer import Event
from birdlive.streamer.sinks.database import DetectionDatabase

from tests.common import birdlive

PASSWORD = "correct horse battery"


@pytest.fixture
def night(tmp_path):
    """A database of three events with clips (no model needed), a clip folder, and a file beside it."""
    clips = tmp_path / "clips"
    clips.mkdir()
    db = DetectionDatabase(tmp_path / "birds.sqlite", labels=["amerob", "norcar"],
                           names=["American Robin", "Northern Cardinal"], clips=clips).open()
    now = time.time()
    for i, species in enumerate(["amerob", "norcar", "amerob"]):
        clip = clips / f"clip{i}.flac"
        sf.write(clip, np.zeros(16000, np.float32), 16000)
        db.on_event(Event(species, species, i, i + 1.0, 0.5 + 0.1 * i, 0.5, "mic", wall_onset=now - 60 + i,
                          clip=str(clip)))
    db.close()
    (tmp_path / "secret.txt").write_text("not for the web")
    (clips / "link.flac").symlink_to(tmp_path / "secret.txt")
    return tmp_path / "birds.sqlite", clips


class Client:
    """One browser-like client of a served page: keeps its cookie, sends paths exactly as given."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.cookie = ""

    def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None,
                body: bytes | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        h = {"Cookie": self.cookie} if self.cookie else {}
        if form is not None:
            body = urlencode(form).encode()
            h["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers={**h, **(headers or {})})
        r = conn.getresponse()
        data, head = r.read(), {k.lower(): v for k, v in r.getheaders()}
        conn.close()
        if "set-cookie" in head:
            self.cookie = head["set-cookie"].split(";", 1)[0]
        return r.status, head, data

    def csrf(self, path: str = "/") -> str:
        status, _, page = self.request("GET", path)
        assert status == 200, page
        return re.search(rb'name="csrf" value="([^"]+)"', page)[1].decode()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_non_loopback_bind_without_auth_is_refused_in_one_line(tmp_path, host):
    r = birdlive("serve", "--db", tmp_path / "x.sqlite", "--host", host, "--port", "0", timeout=60)
    assert r.returncode == 1
    assert r.stderr == (f"error: --host {host} is not a loopback address: the page would be open to the network "
                        f"without a password; add --auth\n")


def test_auth_without_a_password_is_one_line_and_the_password_never_on_the_command_line(tmp_path):
    r = birdlive("serve", "--db", tmp_path / "x.sqlite", "--auth", "--port", "0", timeout=60,
                 environ={k: v for k, v in os.environ.items() if k != "BIRDLIVE_PASSWORD"})
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("error: --auth needs a password")
    r = birdlive("serve", "--db", tmp_path / "x.sqlite", "--password", PASSWORD, timeout=60)
    assert r.returncode == 2 and "No such option: --password" in r.stderr        # there is no such option


def test_a_port_in_use_is_one_line(night, serve):
    served = serve("--db", night[0])
    port = served.url.rsplit(":", 1)[1].strip("/")
    r = birdlive("serve", "--db", night[0], "--port", port, timeout=60)
    assert r.returncode == 1 and r.stderr == f"error: cannot listen on 127.0.0.1:{port} (Address already in use)\n"


@pytest.mark.parametrize("path", ["/clips/../secret.txt", "/clips/%2e%2e/secret.txt", "/clips/..%2fsecret.txt",
                                  "/clips/%2e%2e%2fbirds.sqlite", "/clips//etc/passwd", "/clips/x/../../secret.txt",
                                  "/clips/link.flac", "/clips/", "/clips/nothing.flac", "/clips/clip0.flac%00.png"])
def test_clip_paths_outside_the_clip_folder_get_404(night, serve, path):
    db, clips = night
    client = Client(serve("--db", db, "--clips", clips).url)
    status, _, body = client.request("GET", path)
    assert status == 404 and b"not for the web" not in body and b"SQLite" not in body


def test_a_clip_is_served_whole_and_by_byte_ranges(night, serve):
    db, clips = night
    client = Client(serve("--db", db, "--clips", clips).url)
    whole = (clips / "clip0.flac").read_bytes()
    status, head, body = client.request("GET", "/clips/clip0.flac")
    assert (status, head["content-type"], body) == (200, "audio/flac", whole)
    status, head, body = client.request("GET", "/clips/clip0.flac", headers={"Range": "bytes=10-19"})
    assert (status, head["content-range"], body) == (206, f"bytes 10-19/{len(whole)}", whole[10:20])
    status, _, _ = client.request("GET", "/clips/clip0.flac", headers={"Range": f"bytes={len(whole)}-"})
    assert status == 416


def test_a_review_is_a_post_with_the_sessions_csrf_token(night, serve):
    db, clips = night
    served = serve("--db", db, "--clips", clips, "--reviewer", "ann")
    client = Client(served.url)
    token = client.csrf()
    form = {"event": "2", "verdict": "relabel", "species": "American Robin", "next": "/species?code=amerob"}
    assert client.request("GET", "/review?" + urlencode({**form, "csrf": token}))[0] == 404      # not a GET
    assert client.request("POST", "/review", form)[0] == 403                                    # no token
    wrong = token[:-1] + ("y" if token[-1] == "x" else "x")    # a token ending in x: 1 in 64 (it failed in CI)
    assert client.request("POST", "/review", {**form, "csrf": wrong})[0] == 403                 # a wrong one
    other = Client(served.url)
    other.csrf()
    assert other.request("POST", "/review", {**form, "csrf": token})[0] == 403    # another session's token
    status, _, _ = client.request("POST", "/review", {**form, "csrf": token},
                                  headers={"Origin": "http://evil.example"})
    assert status == 403
    status, head, _ = client.request("POST", "/review", {**form, "csrf": token, "next": "//evil.example/"})
    assert status == 303 and head["location"] == "/"                        # no open redirect
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT event_id, verdict, species, reviewer FROM reviews").fetchall()
    assert rows == [(2, "relabel", "amerob", "ann")]
    assert client.request("POST", "/review", {**form, "species": "dodo", "csrf": token})[0] == 400
    assert client.request("POST", "/review", {**form, "event": "99", "csrf": token})[0] == 404


@pytest.mark.parametrize("path", ["/search?from=2020-01-01&to=2024-01-01", "/search?min_conf=2",
                                  "/search?offset=1000000000", "/search?from=yesterday", "/live/rows?after=-1",
                                  "/species?code=" + "a" * 300, "/search?" + "&".join(f"x{i}=1" for i in range(60)),
                                  "/species?code=%3Cscript%3E"])
def test_queries_are_bounded(night, serve, path):
    client = Client(serve("--db", night[0]).url)
    status, _, body = client.request("GET", path)
    assert status == 400 and b"<script>" not in body


def test_request_bodies_are_bounded(night, serve):
    client = Client(serve("--db", night[0]).url)
    token = client.csrf()
    status, _, _ = client.request("POST", "/review", {"csrf": token, "event": "1", "verdict": "confirm",
                                                     "pad": "x" * 20_000})
    assert status == 413
    status, _, _ = client.request("POST", "/review", body=b"{}", headers={"Content-Type": "application/json"})
    assert status == 415


def test_with_auth_every_page_needs_a_sign_in_and_reviews_carry_the_name(night, serve, tmp_path):
    db, clips = night
    secret = tmp_path / "password.txt"
    secret.write_text(PASSWORD + "\n")
    served = serve("--db", db, "--clips", clips, "--auth", "--password-file", secret, "--host", "127.0.0.1")
    client = Client(served.url)
    status, head, _ = client.request("GET", "/search?species=amerob")
    assert status == 303 and head["location"] == "/login?next=%2Fsearch%3Fspecies%3Damerob"
    assert client.request("GET", "/clips/clip0.flac")[0] == 401
    assert client.request("GET", "/live/rows?after=0")[0] == 401
    token = client.csrf("/login")
    status, _, page = client.request("POST", "/login", {"csrf": token, "name": "bo", "password": "guess"})
    assert status == 401 and b"wrong password" in page
    before = client.cookie
    status, head, _ = client.request("POST", "/login", {"csrf": token, "name": "bo", "password": PASSWORD,
                                                        "next": "/health"})
    assert status == 303 and head["location"] == "/health" and client.cookie != before     # a new session
    assert client.request("GET", "/clips/clip0.flac")[0] == 200
    token = client.csrf("/")
    assert client.request("POST", "/review", {"csrf": token, "event": "1", "verdict": "reject"})[0] == 303
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT verdict, reviewer FROM reviews").fetchall() == [("reject", "bo")]
    assert PASSWORD not in " ".join(served.proc.args)
    assert PASSWORD not in served.stop()


def test_a_page_serves_while_a_detector_holds_a_write_lock_and_never_writes_events(night, serve):
    db, _ = night
    client = Client(serve("--db", db).url)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")           # a detector mid-commit
    # The lock is held through the whole request: a page that needed it could only fail (after the 30 s busy
    # timeout, or the client's), so a full page proves it did not wait on it; no clock needed.
    status, _, page = client.request("GET", "/")
    assert status == 200 and b"American Robin" in page
    writer.execute("ROLLBACK")
    before = Path(db).stat().st_size, sqlite3.connect(db).execute("SELECT COUNT(*) FROM events").fetchone()
    client.request("GET", "/search?species=amerob")
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM events").fetchone() == before[1]
