"""The shared trunk (`birdlive.streamer.core.trunk`): a stream's windows share the backbone's first stages and
still get the scores the full graph gives each window alone — whatever the hop, the ticks and the streams."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from birdlive.model import DEFAULT_CHECKPOINT
from birdlive.model.checkpoint import graph_path, load_config, trunk_graph_paths
from birdlive.streamer import OnnxScorer
from birdlive.streamer.core.offline import scorer_track

from tests.common import ROOT
from tests.core.test_onnx_scorer import replay

pytest.importorskip("onnxruntime")
REAL = ROOT / "recordings" / "XC737279.mp3"
SAME = 1e-5             # float noise: the split runs the same convolutions on the same frames


@pytest.fixture(scope="module")
def scorers():
    """The default model with its shipped split graph, and with the full graph only."""
    shared = OnnxScorer.load(DEFAULT_CHECKPOINT, threads=1)
    alone = OnnxScorer(load_config(DEFAULT_CHECKPOINT), graph_path(DEFAULT_CHECKPOINT), threads=1)
    assert shared.trunk is not None and alone.trunk is None
    return shared, alone


def test_the_embedded_model_ships_its_split_graph_as_export_makes_it(tmp_path):
    pytest.importorskip("onnx")
    from birdlive.model.trunk import split_graph
    for suffix in (".json", ".safetensors", ".onnx"):
        shutil.copy(DEFAULT_CHECKPOINT.with_name(DEFAULT_CHECKPOINT.name + suffix), tmp_path / f"m{suffix}")
    made = split_graph(tmp_path / "m")
    assert made == trunk_graph_paths(tmp_path / "m")
    for new, shipped in zip(made, trunk_graph_paths(DEFAULT_CHECKPOINT)):
        assert new.read_bytes() == shipped.read_bytes()
    trunk = OnnxScorer.load(tmp_path / "m", threads=1).trunk
    assert trunk is not None and (trunk.stride, trunk.edge, trunk.n) == (4, 3, 126)


def test_a_replay_scores_as_the_full_graph_does(scorers):
    shared, alone = scorers
    a, b = replay(shared, REAL), replay(alone, REAL)
    assert len(a.track) > 400 and np.abs(a.track - b.track).max() < SAME
    assert len(a.events) >= 2                 # something to compare: the demo's warbler, twice
    assert [(e.species, e.onset_s, e.offset_s) for e in a.events] == \
           [(e.species, e.onset_s, e.offset_s) for e in b.events]


@pytest.mark.parametrize("hop_s", [0.5, 1.0, 4.8, 5.0])      # 0.5: every other window off the trunk's grid;
def test_whole_recordings_score_as_the_full_graph_does(scorers, hop_s):   # 4.8, 5.0: windows that barely / do not share
    shared, alone = scorers
    wave = np.random.default_rng(0).normal(0, 0.05, 40 * 32000 + 1234).astype(np.float32)
    a, b = scorer_track(shared, wave, hop_s), scorer_track(alone, wave, hop_s)
    assert a.shape == b.shape and np.abs(a - b).max() < SAME


@st.composite
def ticks(draw):
    """Two streams' windows over random log-mel, handed to the scorer in random ticks: hops on and off the
    trunk's grid, gaps wider than a window's interior, windows of one stream now together, now alone."""
    streams = []
    for _ in range(draw(st.integers(1, 2))):
        hops = draw(st.lists(st.sampled_from([4, 100, 100, 100, 48, 480, 484, 600, 50, 7]), min_size=1,
                             max_size=7))
        streams.append(list(np.cumsum([draw(st.sampled_from([0, 8, 12]))] + hops)))
    order = [(k, i) for k, firsts in enumerate(streams) for i in range(len(firsts))]
    order.sort(key=lambda ki: (streams[ki[0]][ki[1]], ki[0]))
    cuts = sorted(draw(st.sets(st.integers(1, len(order) - 1), max_size=len(order))) if len(order) > 1 else [])
    return streams, [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)])]


class Stream:
    """A key for a stream (weak-referenceable, as a `StreamState`)."""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=ticks())
def test_any_ticks_score_as_the_full_graph_does(scorers, case):
    shared, alone = scorers
    streams, groups = case
    rng = np.random.default_rng(len(groups))
    mels = [rng.normal(-40.0, 12.0, (int(firsts[-1]) + 501, 64)).astype(np.float32) for firsts in streams]
    keys = [Stream() for _ in streams]
    for group in groups:
        windows = [mels[k][streams[k][i]:streams[k][i] + 501] for k, i in group]
        got = shared.score(windows, [(keys[k], int(streams[k][i])) for k, i in group])
        want = alone.score(windows)
        assert max(float(np.abs(g - w).max()) for g, w in zip(got, want)) < SAME


def test_a_stream_that_ends_leaves_nothing_held(scorers):
    shared, _ = scorers
    key = Stream()
    mel = np.random.default_rng(3).normal(-40.0, 12.0, (801, 64)).astype(np.float32)
    shared.score([mel[:501], mel[100:601]], [(key, 0), (key, 100)])
    assert shared.trunk is not None and len(shared.trunk._held) >= 1
    before = len(shared.trunk._held)
    del key
    assert len(shared.trunk._held) == before - 1
