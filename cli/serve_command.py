"""`birdlive serve --db PATH [--clips DIR] [--host 127.0.0.1] [--port 8765]`: the web page over the detection
database, in its own process; a thin wrapper over `birdlive.web`.

Registered by app.py: app.command("serve")(serve).
"""
from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Optional

import typer


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):          # a container's user without a passwd entry or $USER
        return "local"


def serve(
    db: Path = typer.Option(..., "--db", help="The detection database the detectors write (--db of replay, "
                                              "listen, analyze); created if missing."),
    clips: Optional[Path] = typer.Option(None, "--clips", help="The clip folder (--clips of the detectors): its "
                                         "clips play in the page; nothing outside it is served."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Any but this machine's own "
                                                         "(loopback) needs --auth."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port (0: any free one)."),
    auth: bool = typer.Option(False, "--auth", help="Ask for a password (from --password-file, else "
                                                    "$BIRDLIVE_PASSWORD; never on the command line)."),
    password_file: Optional[Path] = typer.Option(None, "--password-file", help="With --auth: a file whose first "
                                                 "line is the password."),
    reviewer: Optional[str] = typer.Option(None, "--reviewer", help="Without --auth: the name reviews are "
                                           "signed with (default: your user name)."),
):
    """A web page of the detections: live, today's species, clips and spectrograms, the hour-by-species chart,
    each source's health, search, and review (confirm, reject, relabel). Stop it with Ctrl-C."""
    from birdlive.errors import OptionError
    try:
        import jinja2  # noqa: F401 - the page's templates
    except ImportError:
        raise OptionError("birdlive serve needs the web extra: pip install 'birdlive[web]'") from None
    from birdlive.web.app import App, Settings
    from birdlive.web.security import PasswordHash, is_loopback, read_password
    from birdlive.web.server import serve as serve_app

    if password_file is not None and not auth:
        raise OptionError("--password-file is for --auth")
    if not auth and not is_loopback(host):
        raise OptionError(f"--host {host} is not a loopback address: the page would be open to the network "
                          f"without a password; add --auth")
    if clips is not None and not clips.is_dir():
        raise OptionError(f"--clips {clips}: no such folder")
    password = PasswordHash.of(read_password(password_file)) if auth else None
    app = App(Settings(db, clips, password, reviewer or _user_name()))
    try:
        serve_app(app, host, port, lambda url: print(f"serving {db} on {url}; Ctrl-C to stop", file=sys.stderr,
                                                     flush=True))
    finally:
        app.close()
