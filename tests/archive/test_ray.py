"""`birdlive analyze --ray`: the same job on a real Ray cluster, started here on 127.0.0.1 with two CPUs (two
worker processes): the same results as the local pool, a worker killed mid-run costs nothing, and a rerun after
`kill -9` of the driver finishes the rest.

Ray is a test extra (and `birdlive[ray]`); without it these tests skip."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.common import BIRDLIVE, RECORDING, TINY, birdlive

from tests.archive.test_analyze import assert_each_file_once, long_recording, manifest_rows, wait_for

pytestmark = pytest.mark.ray

pytest.importorskip("ray")

RAY = Path(sys.executable).with_name("ray")
# Ray otherwise takes this machine's outward address for its node, even when told 127.0.0.1; this switch
# (meant for laptops) keeps the whole cluster, and every connection to it, on the loopback interface.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_address():
    """`ray start --head` on 127.0.0.1 with 2 CPUs, for this module; stopped (its whole process group) after.

    Head and drivers share one token that the fixture makes (Ray's token authentication, as the README tells
    users to run a cluster): whatever ~/.ray/auth_token an earlier `ray.init()` left behind, they agree."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))    # short: Ray's socket paths must fit in 107 bytes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = temp / "head.log"
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {**os.environ, **LOOPBACK_ENV, **auth_env}
    env.pop("RAY_AUTH_TOKEN", None)
    with open(log, "w") as out:
        head = subprocess.Popen([str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                                 "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                                 f"--temp-dir={temp / 't'}"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_for(lambda: head.poll() is not None or "Ray runtime started" in log.read_text(), timeout=120,
                 what="the Ray head")
        assert head.poll() is None, log.read_text()[-3000:]
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {**LOOPBACK_ENV, **auth_env}.items():
                mp.setenv(k, v)
            mp.delenv("RAY_AUTH_TOKEN", raising=False)
            yield f"127.0.0.1:{port}"
    finally:
        head.terminate()            # `ray start --block` stops every process it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)


def test_same_results_locally_and_on_ray(tmp_path, ray_address):
    src = tmp_path / "season"
    src.mkdir()
    for name in ("20240501_053000.flac", "SITE_20240501_060000.flac", "a.flac", "b.flac"):
        shutil.copy(RECORDING, src / name)
    (src / "broken.wav").write_text("not audio\n")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    common = ["analyze", src, "--model", TINY, "--workers", 2, "--no-progress", "--tz", "Europe/Berlin"]
    r = birdlive(*common, "--out", local)
    assert r.returncode == 1, r.stderr
    r = birdlive(*common, "--out", on_ray, "--ray", ray_address)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("5 files, 1 failed")
    for name in ("detections.csv", "errors.csv", *(f"results/{f.name}.csv" for f in src.glob("*.flac"))):
        assert (on_ray / name).read_text() == (local / name).read_text(), name
    assert len((local / "detections.csv").read_text().splitlines()) > 1
    rows = manifest_rows(on_ray)
    assert {k: r["status"] for k, r in rows.items()} == {k: r["status"] for k, r in manifest_rows(local).items()}
    assert len({r["worker"] for r in rows.values()}) == 2          # both Ray workers took part


def test_a_ray_worker_killed_mid_run_still_gives_every_file_once(tmp_path, ray_address):
    src = tmp_path / "in"
    src.mkdir()
    files = [long_recording(src / f"rec{i}.flac", repeats=6) for i in range(6)]     # 4 min each
    out = tmp_path / "out"
    cmd = [*BIRDLIVE, "analyze", str(src), "--out", str(out), "--model", str(TINY), "--ray", ray_address,
           "--workers", "2", "--no-progress"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        rows = wait_for(lambda: (m := manifest_rows(out)) and any(r["status"] == "done" for r in m.values()) and m,
                        what="a first finished file")
        first_workers = {r["worker"] for r in rows.values() if r["worker"]}
        assert sum(r["status"] != "done" for r in rows.values()) >= 3
        victim = next(r["worker"] for r in rows.values() if r["status"] == "running")
        os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)      # the actor's process, mid-batch
        _, stderr = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, stderr
    after = manifest_rows(out)
    assert all(r["status"] == "done" for r in after.values())
    assert {r["worker"] for r in after.values()} - first_workers      # Ray restarted the worker and it went on
    assert_each_file_once(out, files)


def test_kill_9_of_the_ray_driver_then_a_rerun_finishes_the_rest(tmp_path, ray_address):
    """The driver dies mid-run (SIGKILL: its actors go with its Ray job); the same command again skips what was
    finished and gives every file exactly once."""
    src = tmp_path / "in"
    src.mkdir()
    files = [long_recording(src / f"rec{i}.flac", repeats=6) for i in range(6)]     # 4 min each
    out = tmp_path / "out"
    args = ["analyze", src, "--out", out, "--model", TINY, "--ray", ray_address, "--workers", 2, "--no-progress"]
    driver = subprocess.Popen([*BIRDLIVE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: any(r["status"] == "done" for r in manifest_rows(out).values()), what="a first finished file")
        driver.kill()
        driver.wait(10)
    finally:
        driver.kill()
    done_before = {k: r["finished_at"] for k, r in manifest_rows(out).items() if r["status"] == "done"}
    assert 1 <= len(done_before) < len(files)
    r = birdlive(*args)
    assert r.returncode == 0, r.stderr
    assert f"{len(files)} files ({len(done_before)} finished before), 0 failed" in r.stderr
    after = manifest_rows(out)
    assert all(row["status"] == "done" for row in after.values())
    assert all(after[k]["finished_at"] == t for k, t in done_before.items())     # not redone
    assert_each_file_once(out, files)


def test_a_local_ray_run_before_does_not_lock_the_driver_out(tmp_path, ray_address, monkeypatch):
    """Ray 2.59+ saves a token to ~/.ray/auth_token on any local `ray.init()`, `analyze --ray local` included;
    a driver given the cluster's token (RAY_AUTH_TOKEN_PATH, as the fixture's head has) still connects after."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(RECORDING, src / "a.flac")
    args = ["analyze", src, "--model", TINY, "--no-progress"]
    local_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    r = birdlive(*args, "--out", tmp_path / "local", "--ray", "local", "--workers", 1, environ=local_env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "home" / ".ray" / "auth_token").exists()       # what used to lock the driver out
    r = birdlive(*args, "--out", tmp_path / "cluster", "--ray", ray_address)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cluster" / "detections.csv").read_text() == (tmp_path / "local" / "detections.csv").read_text()


def test_a_wrong_token_is_one_line_that_names_the_settings(tmp_path, ray_address, monkeypatch):
    wrong = secrets.token_hex(32)
    monkeypatch.setenv("RAY_AUTH_TOKEN", wrong)           # takes precedence over the fixture's token file
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(RECORDING, src / "a.flac")
    r = birdlive("analyze", src, "--out", tmp_path / "out", "--model", TINY, "--no-progress", "--ray", ray_address)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("connecting to")]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "refused this driver's authentication token" in lines[0]
    assert "RAY_AUTH_MODE=token" in lines[0] and "RAY_AUTH_TOKEN_PATH" in lines[0]
    assert wrong not in r.stderr + r.stdout
