"""The LSL adapter against real liblsl streams on this machine (pylsl's bundled liblsl)."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

pylsl = pytest.importorskip("pylsl")

from rig.sources.lsl import LslError, LslMarkerOutlet, LslSource, resolve_inlet
from sim.acquisition import LslPublisher


def _names(tag):
    u = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
    return f"itloop-t-{tag}-spk-{u}", f"itloop-t-{tag}-ttl-{u}"


def test_spikes_and_ttls_arrive_with_their_timestamps():
    spk, ttl = _names("a")
    pub = LslPublisher(spk, ttl, 30000.0, [f"Electrode {i + 1}" for i in range(4)])
    src = LslSource(spk, ttl, n_channels=4, ttl_line=0, resolve_s=10.0)
    src.open()
    try:
        rng = np.random.default_rng(1)
        n = np.sort(rng.integers(10**6, 10**7, 300))
        ch = rng.integers(0, 4, 300)
        for s_, c_ in zip(n, ch):
            pub.spike(int(s_), f"Electrode {c_ + 1}")
        for s_ in (3_000_000, 3_030_000):
            pub.ttl(s_, 0, True)
            pub.ttl(s_ + 300, 0, False)        # falling edges are not sent over LSL
            pub.ttl(s_ + 10, 2, True)          # another line
        st, sc, tt = [], [], []
        deadline = time.monotonic() + 20
        while (len(st) < 300 or len(tt) < 2) and time.monotonic() < deadline:
            ev = src.events_since(0.1)
            st += ev.spike_times_s.tolist()
            sc += ev.spike_channels.tolist()
            tt += ev.ttl_times_s.tolist()
        tc = src.describe()["time_correction_s"]
        assert abs(tc["spikes"]) < 0.01                 # same machine: the correction is ~0
        assert np.allclose(st, n / 30000.0 + tc["spikes"], atol=1e-6) and np.array_equal(sc, ch)
        assert np.allclose(tt, np.array([100.0, 101.0]) + tc["ttl"], atol=1e-6)
        d = src.describe()
        assert d["system"] == "Lab Streaming Layer" and d["sampling_rate_hz"] == 30000.0
        assert "SIMULATED itloop sim-rig" in d["streams"][0]
    finally:
        src.close()
        pub.close()


def test_marker_outlet_publishes_trial_markers():
    name = _names("m")[0]
    out = LslMarkerOutlet(name)
    inlet = resolve_inlet(name, 10.0)
    out.push("itloop session=s day=0 trial=3 stim=1,2")
    sample, ts = inlet.pull_sample(timeout=10.0)
    assert sample == ["itloop session=s day=0 trial=3 stim=1,2"]


def test_a_missing_stream_is_one_clear_error():
    with pytest.raises(LslError, match="no LSL stream named"):
        resolve_inlet("itloop-no-such-stream-" + str(os.getpid()), 1.0)
