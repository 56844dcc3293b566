"""The pages of `birdlive serve`: live detections, a day's species, a species with its clips, the hour-by-species
chart, stream health, search, and reviews (the one thing the page writes to the database).

Each page is rendered on the server (Jinja2, autoescaped); the live page polls for new rows once a second with a
few lines of inline script. `App` is a callable Request → Response (server.py serves it).
"""
from __future__ import annotations

import logging
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Callable

from birdlive.streamer.sinks import database
from birdlive.streamer.sinks.summary import activity_chart

from . import queries
from .queries import Search
from .security import PasswordHash, Session, Sessions, csrf_ok, inside, relative_inside
from .server import BadRequest, Request, Response

log = logging.getLogger(__name__)

COOKIE = "birdlive_session"
PAGE_ROWS = 50
MAX_OFFSET = 100_000
MAX_SEARCH_DAYS = 366
STALE_S = 15.0          # a running stream whose status is older than this: its detector has stopped writing
NO_BIRD_TEXT = "no bird"
_SPECIES = re.compile(r"[\w .'()/-]{1,100}")


@dataclass
class Settings:
    db: Path
    clips: Path | None = None
    password: PasswordHash | None = None        # None: no login (a loopback address only)
    reviewer: str = "local"                     # who reviews are recorded as without a login


def _fmt_time(t: float | None, with_date: bool = False) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1000
    return f"{n:.1f} TB"


class App:
    def __init__(self, settings: Settings):
        import jinja2
        self.settings = settings
        self.sessions = Sessions()
        self.env = jinja2.Environment(loader=jinja2.PackageLoader("birdlive.web", "templates"),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self.env.filters.update(time=_fmt_time, bytes=_fmt_bytes)
        self._local = threading.local()
        self._writer = database.connect(settings.db)       # created or migrated once; reviews only from here on
        self._write_lock = threading.Lock()
        self._chart_lock = threading.Lock()
        self._chart_cache: dict[tuple, bytes] = {}
        self._routes: dict[tuple[str, str], Callable[[Request, Session], Response]] = {
            ("GET", "/"): self.live, ("GET", "/live/rows"): self.live_rows, ("GET", "/species"): self.species,
            ("GET", "/search"): self.search, ("GET", "/chart"): self.chart_page, ("GET", "/chart.png"): self.chart,
            ("GET", "/health"): self.health, ("POST", "/review"): self.review, ("POST", "/logout"): self.logout,
        }

    # ---- plumbing
    @property
    def db(self) -> sqlite3.Connection:
        """This thread's read-only connection (sqlite3 connections stay in their thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = database.connect(self.settings.db, read_only=True)
        return conn

    def __call__(self, req: Request) -> Response:
        if req.method == "HEAD":
            req.method = "GET"
        session = self.sessions.get(req.cookies.get(COOKIE))
        if req.path == "/login":
            return self.login(req, session)
        if req.path.startswith("/clips/") and req.method == "GET":
            return self._guarded(req, session, lambda _: self.clip(req.path[len("/clips/"):]))
        route = self._routes.get((req.method, req.path))
        if route is None:
            return self.error(404, "no such page", session)
        return self._guarded(req, session, lambda signed: route(req, signed))

    def _guarded(self, req: Request, session: Session | None, page: Callable[[Session], Response]) -> Response:
        """The page, for a signed-in session (or anyone, without a password); else the login page."""
        if self.settings.password is None and session is None:
            session = self.sessions.new(self.settings.reviewer, signed_in=True)
            response = self._page_for(req, session, page)
            response.headers.append(("Set-Cookie", _cookie(session.token)))
            return response
        if session is None or not session.signed_in:
            if req.method == "GET" and not req.path.startswith(("/live/", "/clips/", "/chart.png")):
                return Response.redirect(f"/login?next={_quote(req.target)}")
            return Response.text(401, "sign in first")
        return self._page_for(req, session, page)

    def _page_for(self, req: Request, session: Session, page: Callable[[Session], Response]) -> Response:
        self._local.session = session
        if req.method == "POST":
            if not csrf_ok(session, req.form.get("csrf")):
                return Response.text(403, "the form is stale (no or wrong CSRF token): reload the page")
            origin = req.headers.get("origin")
            if origin and origin != "null" and origin.split("://", 1)[-1] != req.headers.get("host"):
                return Response.text(403, "a form from another site")
        return page(session)

    def render(self, template: str, status: int = 200, **values) -> Response:
        session = getattr(self._local, "session", None)
        nonce = secrets.token_urlsafe(12)
        html = self.env.get_template(template).render(session=session, nonce=nonce, auth=self.settings.password
                                                      is not None, no_bird=NO_BIRD_TEXT, **values)
        csp = (f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
               f"img-src 'self'; media-src 'self'; form-action 'self'; frame-ancestors 'none'")
        return Response(status, html.encode("utf-8"), headers=[("Content-Security-Policy", csp)])

    def error(self, status: int, message: str, session: Session | None = None) -> Response:
        self._local.session = session
        return self.render("error.html", status=status, message=message)

    def _rows(self, rows: list[sqlite3.Row]) -> list[dict]:
        """Events as the templates show them: with their clip's and picture's links inside the clip folder."""
        common = queries.names(self.db)
        out = []
        for r in rows:
            clip = relative_inside(self.settings.clips, r["clip"])
            picture = None
            if clip is not None and inside(self.settings.clips, clip[:-len(Path(clip).suffix)] + ".png"):
                picture = clip[:-len(Path(clip).suffix)] + ".png"
            final = r["final"]
            out.append({**dict(r), "clip_url": clip, "picture_url": picture,
                        "final_name": NO_BIRD_TEXT if final == "" else common.get(final, final),
                        "source_name": Path(r["source"]).name or r["source"]})
        return out

    def _labels(self) -> list[tuple[str, str]]:
        return sorted(queries.names(self.db).items(), key=lambda kv: kv[1].lower())

    # ---- pages
    def live(self, req: Request, session: Session) -> Response:
        today = date.today()
        rows = queries.recent(self.db, limit=PAGE_ROWS)
        return self.render("live.html", rows=self._rows(rows), last_id=queries.last_id(self.db), day=today,
                           species=queries.day_species(self.db, today), names=queries.names(self.db),
                           labels=self._labels(), streams=self._streams(), next=req.target)

    def live_rows(self, req: Request, session: Session) -> Response:
        after = _int(req.query, "after", 0, 0, 2 ** 62)
        rows = queries.recent(self.db, after_id=after, limit=PAGE_ROWS)
        last = max([after, *(r["id"] for r in rows)])
        response = self.render("rows.html", rows=self._rows(rows), next="/")
        response.headers.append(("X-Last-Id", str(last)))
        return response

    def species(self, req: Request, session: Session) -> Response:
        code = _species(req.query.get("code"))
        if code is None:
            raise BadRequest("which species? (?code=…)")
        offset = _int(req.query, "offset", 0, 0, MAX_OFFSET)
        rows = queries.search(self.db, Search(species=code, unreviewed=req.query.get("unreviewed") == "1"),
                              PAGE_ROWS, offset)
        names = queries.names(self.db)
        return self.render("species.html", code=code, name=names.get(code, code), rows=self._rows(rows),
                           offset=offset, page_rows=PAGE_ROWS, labels=self._labels(), next=req.target,
                           unreviewed=req.query.get("unreviewed") == "1")

    def search(self, req: Request, session: Session) -> Response:
        s = _search(req.query)
        offset = _int(req.query, "offset", 0, 0, MAX_OFFSET)
        rows = queries.search(self.db, s, PAGE_ROWS, offset) if req.query else []
        return self.render("search.html", s=s, rows=self._rows(rows), offset=offset, page_rows=PAGE_ROWS,
                           searched=bool(req.query), labels=self._labels(), next=req.target, query=req.query)

    def chart_page(self, req: Request, session: Session) -> Response:
        day = _date(req.query.get("day")) or date.today()
        return self.render("chart.html", day=day, species=queries.day_species(self.db, day),
                           names=queries.names(self.db))

    def chart(self, req: Request, session: Session) -> Response:
        """`summary`'s hour-by-species chart of a day's counted events (drawn again only when they changed)."""
        day = _date(req.query.get("day")) or date.today()
        key = (day, queries.last_id(self.db),
               self.db.execute("SELECT COALESCE(MAX(id), 0) FROM reviews").fetchone()[0])
        with self._chart_lock:
            png = self._chart_cache.get(key)
            if png is None:
                rows = queries.day_detections(self.db, day, queries.names(self.db))
                with tempfile.TemporaryDirectory(prefix="birdlive-chart-") as tmp:
                    png = activity_chart(rows, Path(tmp) / "chart.png").read_bytes()
                self._chart_cache = {key: png}
        return Response(200, png, "image/png")

    def health(self, req: Request, session: Session) -> Response:
        return self.render("health.html", streams=self._streams(), disk=self._disk())

    def _streams(self) -> list[dict]:
        import json
        now = time.time()
        out = []
        for r in queries.streams(self.db):
            losses = {k.replace("_", " "): v for k, v in json.loads(r["losses"]).items() if v}
            state = r["state"]
            if state == "running" and now - r["updated"] > STALE_S:
                state = "silent"            # its detector stopped writing (killed, or its machine is off)
            out.append({**dict(r), "state": state, "losses": losses, "warnings": json.loads(r["warnings"]),
                        "source_name": Path(r["source"]).name or r["source"], "age_s": now - r["updated"]})
        return out

    def _disk(self) -> list[dict]:
        """Each clip folder (serve's, and the ones the detectors write to): its size and the disk's free space."""
        folders = {str(self.settings.clips.resolve())} if self.settings.clips is not None else set()
        folders |= set(queries.stream_clip_folders(self.db))
        folders.add(str(Path(self.settings.db).resolve().parent))
        out = []
        for f in sorted(folders):
            path = Path(f)
            if not path.is_dir():
                continue
            size = sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if f != str(
                Path(self.settings.db).resolve().parent) else None
            out.append({"folder": f, "size": size, "free": shutil.disk_usage(path).free})
        return out

    def clip(self, relative: str) -> Response:
        path = inside(self.settings.clips, relative)
        if path is None or path.suffix.lower() not in (".flac", ".png", ".wav", ".mp3", ".ogg"):
            return Response.text(404, "no such clip")
        return Response(file=path)

    # ---- reviews and sessions
    def review(self, req: Request, session: Session) -> Response:
        event_id = _int(req.form, "event", 0, 1, 2 ** 62)
        verdict = req.form.get("verdict", "")
        species = None
        if verdict == "relabel":
            species = self._relabel_target(req.form.get("species", ""))
        elif verdict not in database.VERDICTS:
            raise BadRequest(f"verdict must be one of {', '.join(database.VERDICTS)}")
        with self._write_lock:
            try:
                database.add_review(self._writer, event_id, verdict, session.name, species)
            except ValueError as e:
                raise BadRequest(str(e), 404) from None
        return Response.redirect(_local_target(req.form.get("next")))

    def _relabel_target(self, text: str) -> str:
        """A species code from what the reviewer typed: a code, a common name, or "no bird"."""
        text = text.strip()
        if text.lower() == NO_BIRD_TEXT:
            return database.NO_BIRD
        names = queries.names(self.db)
        if text in names:
            return text
        by_name = {n.lower(): code for code, n in names.items()}
        if text.lower() in by_name:
            return by_name[text.lower()]
        raise BadRequest(f"relabel: {text[:100]!r} is not a species of the models that wrote this database")

    def login(self, req: Request, session: Session | None) -> Response:
        target = _local_target(req.query.get("next") or req.form.get("next"))
        if self.settings.password is None:
            return Response.redirect(target)
        if session is None:
            session = self.sessions.new("", signed_in=False)
        self._local.session = session
        message = ""
        if req.method == "POST":
            if not csrf_ok(session, req.form.get("csrf")):
                message = "the form was stale; try again"
            elif self.settings.password.matches(req.form.get("password", "")):
                self.sessions.drop(session.token)           # a new token on sign-in (no session fixation)
                name = (req.form.get("name") or "").strip()[:64] or "reviewer"
                signed = self.sessions.new(name, signed_in=True)
                response = Response.redirect(target)
                response.headers.append(("Set-Cookie", _cookie(signed.token)))
                return response
            else:
                time.sleep(1.0)                             # a guesser gets one try a second per connection
                message = "wrong password"
        response = self.render("login.html", status=401 if message else 200, message=message, next=target)
        response.headers.append(("Set-Cookie", _cookie(session.token)))
        return response

    def logout(self, req: Request, session: Session) -> Response:
        self.sessions.drop(session.token)
        response = Response.redirect("/login")
        response.headers.append(("Set-Cookie", f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"))
        return response

    def close(self) -> None:
        self._writer.close()


def _cookie(token: str) -> str:
    return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"


def _quote(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")


def _local_target(target: str | None) -> str:
    """Where to go after a form: a path of this site only (never `//host` or a full URL: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _int(values: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = values.get(name)
    if text is None or text == "":
        return default
    try:
        n = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not low <= n <= high:
        raise BadRequest(f"{name} must be from {low} to {high}")
    return n


def _float(values: dict[str, str], name: str, default: float) -> float:
    text = values.get(name)
    if not text:
        return default
    try:
        x = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not 0.0 <= x <= 1.0:
        raise BadRequest(f"{name} must be from 0 to 1")
    return x


def _date(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{text[:40]!r} is not a date (YYYY-MM-DD)") from None


def _species(text: str | None) -> str | None:
    if not text:
        return None
    if not _SPECIES.fullmatch(text):
        raise BadRequest("not a species code")
    return text


def _search(q: dict[str, str]) -> Search:
    first, last = _date(q.get("from")), _date(q.get("to"))
    if first is not None and last is not None:
        if last < first:
            raise BadRequest("the search ends before it starts")
        if (last - first).days >= MAX_SEARCH_DAYS:
            raise BadRequest(f"search at most {MAX_SEARCH_DAYS} days at once")
    lo, hi = _float(q, "min_conf", 0.0), _float(q, "max_conf", 1.0)
    return Search(first, last, _species(q.get("species")), lo, hi, q.get("unreviewed") == "1",
                  q.get("source") or None)


