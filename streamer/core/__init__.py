"""The streaming core: events and the sink protocols, settings, ring buffer, clock, per-stream state, shared
scorer, stitcher, smoother, thresholds, the runner, and the offline reference. Imports no source and no sink."""
