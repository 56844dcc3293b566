"""birdlive: real-time streaming bird-call detector.

The library is `birdlive.streamer`, `birdlive.model` and `birdlive.train`; the command line is `birdlive.cli`,
imported only by the `birdlive` command and `python -m birdlive`.
"""
import logging
import os

# OpenMP threads that spin while waiting make torch tens of times slower whenever another process holds a core
# (measured on 2 cores: 2.8 s against 0.10 s per batch of four 5 s windows with this set). Set before any
# submodule imports torch; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# Library code logs (birdlive.log); what is shown, and how, is the program's choice: the `birdlive` command
# prints one line per warning on stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())
