"""Display fidelity: integer nearest-neighbour scaling shows the stored pixels exactly (a real
PsychoPy window under Xvfb, read back from the back buffer), gamma from a PsychoPy Monitor
Center monitor by name, and the photodiode-to-flip latency distribution."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rig.presenter.stage import integer_factor
from rig.presenter.timing_check import format_latency, photodiode_latency


def test_photodiode_latency_matches_each_flip_to_its_pulse():
    rng = np.random.default_rng(0)
    flips = np.arange(100) * 0.2 + 5.0
    lat = rng.uniform(0.008, 0.012, 100)
    ttl = flips + lat
    ttl = np.r_[np.delete(ttl, [10, 50]), 3.0]             # two flips lost their pulse; one stray pulse
    st = photodiode_latency(ttl, flips)
    assert st["matched"] == 98 and st["missing"] == 2 and st["extra"] == 1
    np.testing.assert_allclose(np.sort(st["latency_ms"]), np.sort(np.delete(lat, [10, 50]) * 1000))
    assert 8.0 <= st["p5_ms"] < st["median_ms"] < st["p95_ms"] <= 12.0
    assert "98 matched" in format_latency(st)


def test_integer_factor():
    assert integer_factor(289.0, 224) == 1 and integer_factor(470.0, 224) == 2 and integer_factor(50, 224) == 1


SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    from psychopy import monitors
    mon = monitors.Monitor("itloop-test-gamma", width=40.0, distance=57.0)
    grid = np.array([[0, 100, 1.0, 0, 0, 0], [0, 30, 2.1, 0, 0, 0], [0, 60, 2.2, 0, 0, 0], [0, 10, 2.3, 0, 0, 0]], float)
    mon.setGammaGrid(grid)
    mon.setSizePix([800, 600])
    mon.save()
    from rig.presenter.stage import Monitor, Stage
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = {}
    for scaling in ("integer", "smooth"):
        st = Stage(Monitor(40.0, 57.0, 800, 600), window_px=(400, 300), scaling=scaling,
                   gamma_monitor="itloop-test-gamma" if scaling == "integer" else "")
        st.image_size_px = 100.0                      # asks for 100 px: integer scaling shows 3 x 32 = 96 px
        st.preload(img[None])
        st.win.clearBuffer()
        st.draw("stim_on", 0)
        shot = st.capture("back")
        k = 3 if scaling == "integer" else None
        y0, x0 = 150 - 48, 200 - 48
        region = shot[y0:y0 + 96, x0:x0 + 96]
        out[scaling] = {"exact": bool(np.array_equal(region, np.kron(img, np.ones((3, 3, 1), np.uint8)))),
                        "shown_px": st.shown_size_px(32), "gamma": st.gamma and st.gamma["gamma_rgb"]}
        st.close()
    try:
        Stage(Monitor(40.0, 57.0, 800, 600), window_px=(64, 64), gamma_monitor="no-such-monitor")
        out["unknown"] = "accepted"
    except ValueError as exc:
        out["unknown"] = str(exc)
    print(json.dumps(out))
''')


@pytest.mark.xvfb
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display: run the tests under `xvfb-run -a`")
def test_integer_scaling_shows_exact_pixels_and_gamma_loads_from_monitor_center(tmp_path):
    pytest.importorskip("psychopy")
    env = {**os.environ, "HOME": str(tmp_path)}          # Monitor Center files go to this HOME, not the user's
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180, env=env, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["integer"]["exact"] and res["integer"]["shown_px"] == 96.0     # every stored pixel shown 3 x 3, exactly
    assert not res["smooth"]["exact"] and res["smooth"]["shown_px"] == 100.0  # bilinear resampling changes them
    assert res["integer"]["gamma"] == pytest.approx([2.1, 2.2, 2.3], abs=1e-6)    # stored as float32 by PsychoPy
    assert "not a PsychoPy Monitor Center monitor" in res["unknown"] and "itloop-test-gamma" in res["unknown"]
