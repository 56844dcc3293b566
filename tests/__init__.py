"""birdlive's tests, laid out like the code; shared helpers in common.py, fixtures in conftest.py."""
