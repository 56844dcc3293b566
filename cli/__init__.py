"""birdlive: real-time streaming bird-call detector."""
__version__ = "0.1.0"
