"""What keeps the page safe to open: who may see it (a loopback address, or a password), sessions and their CSRF
tokens, and files served only from inside the clip folder.

The password is read from a file or an environment variable (never the command line: `ps` shows that to every
user), hashed at once with scrypt (stdlib hashlib) and the text dropped; a login compares hashes in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from birdlive.errors import OptionError

PASSWORD_ENV = "BIRDLIVE_PASSWORD"
SESSION_S = 7 * 24 * 3600          # a login lasts a week
MAX_SESSIONS = 10_000              # the oldest go beyond this (a client that never keeps cookies)


def is_loopback(host: str) -> bool:
    """True when every address `host` names is this machine's own (127.0.0.0/8, ::1)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise OptionError(f"--host {host}: not an address of this machine") from None
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def read_password(password_file: Path | None) -> str:
    """The password from `password_file` (its first line), else from $BIRDLIVE_PASSWORD; OptionError if neither."""
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise OptionError(f"--password-file {password_file}: {e.strerror or e}") from None
        password = text[0] if text else ""
        where = f"--password-file {password_file}"
    else:
        password, where = os.environ.get(PASSWORD_ENV, ""), f"${PASSWORD_ENV}"
        if not password:
            raise OptionError(f"--auth needs a password: in a file (--password-file) or in ${PASSWORD_ENV}")
    if len(password) < 8:
        raise OptionError(f"{where}: the password is shorter than 8 characters")
    return password


@dataclass(frozen=True)
class PasswordHash:
    salt: bytes
    digest: bytes

    @staticmethod
    def of(password: str) -> "PasswordHash":
        salt = secrets.token_bytes(16)
        return PasswordHash(salt, _scrypt(password, salt))

    def matches(self, password: str) -> bool:
        return hmac.compare_digest(self.digest, _scrypt(password[:1024], self.salt))


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** 14, r=8, p=1, dklen=32)


@dataclass
class Session:
    token: str
    name: str                           # the reviewer, as reviews record them
    signed_in: bool
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    expires: float = field(default_factory=lambda: time.time() + SESSION_S)


class Sessions:
    """Sessions by their cookie's random token, in memory (a restart signs everyone out)."""

    def __init__(self):
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, token: str | None) -> Session | None:
        with self._lock:
            s = self._by_token.get(token or "")
            if s is not None and s.expires < time.time():
                del self._by_token[s.token]
                return None
            return s

    def new(self, name: str, signed_in: bool) -> Session:
        s = Session(secrets.token_urlsafe(32), name, signed_in)
        with self._lock:
            if len(self._by_token) >= MAX_SESSIONS:
                oldest = min(self._by_token.values(), key=lambda x: x.expires)
                del self._by_token[oldest.token]
            self._by_token[s.token] = s
        return s

    def drop(self, token: str) -> None:
        with self._lock:
            self._by_token.pop(token, None)


def csrf_ok(session: Session | None, given: str | None) -> bool:
    return session is not None and given is not None and hmac.compare_digest(session.csrf, given)


def inside(folder: Path | None, relative: str) -> Path | None:
    """The file `relative` names inside `folder`, or None: outside it (`..`, an absolute path, a link out of it),
    missing, or not a file."""
    if folder is None or not relative or "\0" in relative or relative.startswith(("/", "\\")):
        return None
    root = folder.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def relative_inside(folder: Path | None, path: str | None) -> str | None:
    """`path` (absolute) relative to `folder`, where it lies inside it; else None (the page offers no link)."""
    if folder is None or not path:
        return None
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None
