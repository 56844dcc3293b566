"""Archive analysis: a season of recorder files through the streaming detector, resumably, on every core or a
Ray cluster (`birdlive analyze`).

    discovery.py  the recordings among the inputs, and when each recorder started
    manifest.py   OUTDIR: manifest.sqlite (what is finished), results/, detections.csv, errors.csv
    worker.py     AnalysisSettings; the Analyzer in each worker process (model loaded once) and its FileResults
    pool.py       run_local: a process pool on this machine
    ray.py        run_ray: Ray actors on a cluster (imported only with --ray)
    driver.py     analyze_archive: the manifest, batches to an executor, results published as they come
"""
from .discovery import Recording, find_recordings
from .driver import ArchiveSummary, analyze_archive, prepare_outdir
from .pool import run_local
from .worker import AnalysisSettings, WorkerSettings, default_workers

__all__ = ["AnalysisSettings", "ArchiveSummary", "Recording", "WorkerSettings", "analyze_archive",
           "default_workers", "find_recordings", "prepare_outdir", "run_local"]
