"""The one base class of errors a user can act on (a bad file, an unknown device, not a checkpoint, a bad option).

`str(error)` is one line for the user. The command line turns these into `error: …` and exit status 1; anything
else is a bug and is reported as one, with its traceback kept (see `birdlive.cli.main`). It lives at the top of
the package so that `birdlive.model`, `birdlive.streamer` and `birdlive.train` can all raise it without
importing one another.
"""


class BirdliveError(Exception):
    """A problem the user can fix; the message says what, in one line."""


class OptionError(BirdliveError, ValueError):
    """An option value that cannot work (a hop off the frame grid, thresholds out of order, …)."""


def one_line(text: object) -> str:
    """Any message as one line for the user: line breaks and runs of white space become single spaces."""
    return " ".join(str(text).split())


# The packages of `pip install 'birdlive[torch]'` (import names) that training, evaluation, export and the torch
# scorer import: the lean runtime (ONNX Runtime) has none of them.
TORCH_EXTRA_MODULES = ("torch", "timm", "torchlibrosa", "librosa", "sklearn", "torchvision", "onnx")
TORCH_EXTRA = "pip install 'birdlive[torch]'"


class MissingExtra(BirdliveError):
    """Something asked for needs the torch extra, which is not installed."""


def needs_torch(what: str) -> None:
    """One line (`{what} needs the torch extra: pip install …`) when torch or timm is not installed. Looks for the
    packages without importing them: the command that asked imports them when it starts its work."""
    from importlib.util import find_spec
    for name in ("torch", "timm"):
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingExtra(f"{what} needs the torch extra: {TORCH_EXTRA}")
