"""birdlive.cli: the `birdlive` command (typer), on top of the library; imported only by the command."""
from .app import app, main

__all__ = ["app", "main"]
