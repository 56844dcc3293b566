"""The page's HTTP layer on the standard library: a threaded server (one thread per connection: a page, its
polls and its clips load at once), requests parsed and bounded, responses with the headers every page gets, and
files with byte ranges (an <audio> element seeks with them)."""
from __future__ import annotations

import logging
import mimetypes
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024            # a review or a login is a few hundred bytes
MAX_URL = 4096
MAX_FIELD = 256                 # one query or form value
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class BadRequest(Exception):
    """One line for the client, with its status (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str                               # decoded, without the query
    raw_path: str                           # as sent (percent-escapes kept)
    query: dict[str, str]                   # each name's first value
    headers: dict[str, str]                 # lower-case names
    cookies: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """The path and query as sent: where a form sends the reader back to."""
        return self.raw_path


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: Path | None = None                # sent from disk instead of `body`, with Range support

    @staticmethod
    def redirect(location: str) -> "Response":
        return Response(303, headers=[("Location", location)])

    @staticmethod
    def text(status: int, message: str) -> "Response":
        return Response(status, message.encode("utf-8"), "text/plain; charset=utf-8")


def _first_values(text: str) -> dict[str, str]:
    try:
        values = parse_qs(text, keep_blank_values=True, max_num_fields=50, strict_parsing=False)
    except ValueError:
        raise BadRequest("too many fields") from None
    out = {k: v[0] for k, v in values.items()}
    if any(len(v) > MAX_FIELD or len(k) > MAX_FIELD for k, v in out.items()):
        raise BadRequest("a field is too long")
    return out


class Handler(BaseHTTPRequestHandler):
    """Hands each request to the server's `app` (a callable Request → Response)."""
    server_version = "birdlive"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    app: Callable[[Request], Response]

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def do_POST(self) -> None:
        self._serve(with_body=True)

    def _serve(self, with_body: bool) -> None:
        try:
            response = self.app(self._request())
        except BadRequest as e:
            response = Response.text(e.status, str(e))
        except Exception as e:  # noqa: BLE001 - one request fails, the page goes on
            log.exception("a page failed: %s %s (%s: %s)", self.command, self.path, type(e).__name__, e)
            response = Response.text(500, "internal error (the server's log has it)")
        try:
            self._send(response, with_body)
        except (BrokenPipeError, ConnectionResetError):
            pass                                    # the browser went away (a poll cut short, a closed tab)

    def _request(self) -> Request:
        if len(self.path) > MAX_URL:
            raise BadRequest("URL too long", 414)
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        cookies: dict[str, str] = {}
        try:
            cookies = {k: m.value for k, m in SimpleCookie(headers.get("cookie", "")).items()}
        except CookieError:
            pass
        req = Request(self.command, unquote(parts.path), parts.path + (f"?{parts.query}" if parts.query else ""),
                      _first_values(parts.query), headers, cookies)
        if self.command == "POST":
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise BadRequest("bad Content-Length") from None
            if length > MAX_BODY or length < 0:
                self.close_connection = True      # the body is not read: the connection cannot be reused
                raise BadRequest("request too large", 413)
            if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                self.close_connection = True
                raise BadRequest("a form is expected", 415)
            req.form = _first_values(self.rfile.read(length).decode("utf-8", "replace"))
        return req

    def _send(self, r: Response, with_body: bool) -> None:
        body, status, extra = r.body, r.status, list[tuple[str, str]]()
        if r.file is not None:
            body, status, extra = _file_part(r.file, self.headers.get("Range"))
            r.content_type = mimetypes.guess_type(r.file.name)[0] or "application/octet-stream"
        self.send_response(status)
        self.send_header("Content-Type", r.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in [*SECURITY_HEADERS, *r.headers, *extra]:
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:      # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)


SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]


def _file_part(path: Path, range_header: str | None) -> tuple[bytes, int, list[tuple[str, str]]]:
    """The file, or the one byte range asked for (206), or 416 for a range outside it."""
    data = path.read_bytes()
    size = len(data)
    headers = [("Accept-Ranges", "bytes")]
    m = _RANGE.fullmatch(range_header.strip()) if range_header else None
    if m is None or (not m[1] and not m[2]):
        return data, 200, headers
    if m[1]:
        start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
    else:
        start, end = max(0, size - int(m[2])), size - 1      # the last N bytes
    if start >= size or start > end:
        return b"", HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, [*headers, ("Content-Range", f"bytes */{size}")]
    return data[start:end + 1], 206, [*headers, ("Content-Range", f"bytes {start}-{end}/{size}")]


def make_server(host: str, port: int, app: Callable[[Request], Response]) -> ThreadingHTTPServer:
    """A server bound to (host, port), not yet serving; OSError where the address is taken or not ours."""
    handler = type("BirdliveHandler", (Handler,), {"app": staticmethod(app)})
    server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
    if ":" in host:
        import socket
        server_class = type("Server6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_class((host, port), handler)
    server.daemon_threads = True
    return server


def serve(app: Callable[[Request], Response], host: str, port: int, ready: Callable[[str], None]) -> None:
    """Serve `app` until SIGINT or SIGTERM; `ready(url)` once it listens."""
    import signal
    import threading

    from birdlive.errors import OptionError
    try:
        server = make_server(host, port, app)
    except OSError as e:            # the port taken, an address not this machine's
        raise OptionError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
    ready(f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
