"""Eye sources (real pylsl/liblsl, real sr-research-pylink in dummy mode), the calibration
fit against the simulated eye's known raw map, and reward drivers on a real pty."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from rig.backend import EyeSource, GazeSamples, Reward
from rig.errors import UserError
from rig.sources.calibration import CalibrationMap, calibration_targets, fit_calibration, format_validation
from rig.sources.reward import NoReward, RewardLog, SerialReward, give_and_log, make_reward
from sim.gaze import GazeModel, GazeParams
from tests.lsl_local import unique_stream  # imported first: it sets LSLAPICFG

AFFINE = [0.9, 0.15, -0.1, 1.2, 3.0, -2.0]        # raw = M @ deg + c


def test_gaze_samples_check_lengths_and_concat():
    a = GazeSamples([0, 1], [1, 2], [3, 4], [np.nan, np.nan], [1, 2], [3, 4])
    both = GazeSamples.concat([a, GazeSamples.empty(), a])
    assert len(both) == 4 and both.x_deg.tolist() == [1, 2, 1, 2]
    with pytest.raises(ValueError, match="x_deg"):
        GazeSamples([0, 1], [1], [3, 4], [0, 0], [0, 0], [0, 0])


# ------------------------------------------------------------------ calibration
@pytest.mark.parametrize("n_points", [5, 9])
def test_calibration_recovers_known_affine_map_from_simulated_raw_gaze(n_points):
    targets = calibration_targets(n_points, 5.0)
    # fixational jitter 0.05 deg per sample, slow drift 0.02 deg SD (drift is what limits any calibration)
    model = GazeModel(GazeParams(jitter_deg=0.05, drift_deg=0.02, raw_affine=AFFINE, seed=3))
    raw, tgt = [], []
    t = 0.0
    for x, y in targets:
        model.look_at(x, y)
        times = t + np.arange(150) / 500.0              # 300 ms resting on the target at 500 Hz
        raw.append(model.sample(times)[:, :2])
        tgt.append(np.tile([x, y], (150, 1)))
        t = times[-1] + 0.5
    cmap = fit_calibration(np.concatenate(raw), np.concatenate(tgt), "affine")
    # the fitted map inverts the simulator's raw map over the calibrated area, not only at the targets
    grid = np.stack(np.meshgrid(np.linspace(-5, 5, 11), np.linspace(-5, 5, 11)), -1).reshape(-1, 2)
    M, c = np.array(AFFINE[:4]).reshape(2, 2), np.array(AFFINE[4:])
    err = np.linalg.norm(cmap(grid @ M.T + c) - grid, axis=1)
    assert err.max() < 0.1, f"calibration error up to {err.max():.3f} deg"
    assert cmap.error_deg.shape == (n_points,) and cmap.error_deg.max() < 0.1
    assert "mean error" in format_validation(cmap.targets_deg, cmap.error_deg)


def test_quadratic_calibration_and_storage_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    deg = rng.uniform(-6, 6, (400, 2))
    raw = np.c_[deg[:, 0] + 0.02 * deg[:, 0] ** 2, deg[:, 1] - 0.01 * deg[:, 0] * deg[:, 1]]
    quad = fit_calibration(raw, deg, "quadratic")
    lin = fit_calibration(raw, deg, "affine")
    assert np.abs(quad(raw) - deg).max() < np.abs(lin(raw) - deg).max()
    again = CalibrationMap.load(quad.save(tmp_path / "cal.json"))
    np.testing.assert_allclose(again(raw), quad(raw))
    (tmp_path / "bad.json").write_text('{"model": "cubic", "coef": [1]}')
    with pytest.raises(ValueError, match="bad.json"):
        CalibrationMap.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="5 or 9"):
        calibration_targets(7, 5.0)


# ------------------------------------------------------------------ LSL
def _sim_gaze(name, *extra):
    return subprocess.Popen([sys.executable, "-m", "rig.cli", "sim-gaze", "--name", name, "--seconds", "30", *extra],
                            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _read_for(src, seconds):
    parts, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        parts.append(src.read())
        time.sleep(0.01)
    return GazeSamples.concat(parts)


def _wait_for(src, pred, timeout_s=10.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        s = src.read()
        if len(s) and pred(s):
            return s
        time.sleep(0.01)
    raise AssertionError("the gaze stream never showed the expected samples")


def test_lsl_gaze_inlet_reads_the_simulated_eye_in_degrees_and_raw():
    from rig.sources.gaze_lsl import LslEyeSource

    name = unique_stream()
    proc = _sim_gaze(name, "--raw-affine", ",".join(map(str, AFFINE)), "--jitter", "0.02", "--drift", "0.02")
    src = LslEyeSource(name, units="raw", resolve_timeout_s=20)
    try:
        src.open()
        assert isinstance(src, EyeSource) and src.rate_hz == 500.0
        s = _read_for(src, 1.0)
        assert len(s) > 200                                   # ~500 Hz arrives in chunks
        assert np.all(np.diff(s.t_s) > 0) and abs(src.now_s() - s.t_s[-1]) < 0.5   # LSL clock of this computer
        assert np.nanmedian(s.pupil) == pytest.approx(1000, rel=0.05)
        # raw units without a calibration: the simulator's raw map of the centre
        np.testing.assert_allclose(np.median(np.c_[s.raw_x, s.raw_y], 0), AFFINE[4:], atol=0.1)
        # with the true inverse as calibration the degrees come out, and `look` moves the eye
        M, c = np.array(AFFINE[:4]).reshape(2, 2), np.array(AFFINE[4:])
        src.set_calibration(lambda raw: (np.asarray(raw) - c) @ np.linalg.inv(M).T)
        proc.stdin.write("look 4 -3\n")
        proc.stdin.flush()
        s = _wait_for(src, lambda s: abs(s.x_deg[-1] - 4) < 0.5)
        s = _read_for(src, 0.3)
        assert np.median(s.x_deg) == pytest.approx(4, abs=0.1) and np.median(s.y_deg) == pytest.approx(-3, abs=0.1)
    finally:
        src.close()
        proc.kill()
        proc.wait(timeout=10)


def test_lsl_inlet_without_stream_is_one_clear_error():
    from rig.sources.gaze_lsl import LslEyeSource

    with pytest.raises(UserError, match="no LSL stream named"):
        LslEyeSource(unique_stream("absent"), resolve_timeout_s=0.5).open()


# ------------------------------------------------------------------ EyeLink (dummy mode)
def test_eyelink_through_sr_research_pylink_dummy_mode():
    pylink = pytest.importorskip("pylink", reason="pip install sr-research-pylink")
    assert hasattr(pylink, "EyeLink") and hasattr(pylink, "getEYELINK"), "this is not SR Research's pylink"
    from rig.sources.eyelink import EyeLinkEyeSource

    src = EyeLinkEyeSource(None, screen_px=(1920, 1080), px_per_deg=40.0)
    src.open()
    try:
        assert src.dummy and isinstance(src, EyeSource)
        assert len(src.read()) == 0                            # nothing connected: no samples
        assert isinstance(src.now_s(), float)
        # the pixel -> degree conversion of what the link would send (screen centre, 40 px/deg)
        s = src.samples_from_pixels(np.array([1.0, 2.0]), np.array([[960 + 80, 540 - 40], [1e8, 1e8]]),
                                    np.array([900.0, 0.0]))
        assert s.x_deg[0] == pytest.approx(2.0) and s.y_deg[0] == pytest.approx(1.0)
        assert np.isnan(s.x_deg[1])                            # EyeLink's missing-data sentinel
    finally:
        src.close()
        src.close()


# ------------------------------------------------------------------ reward
def test_serial_reward_command_mode_on_a_real_pty():
    master, slave = os.openpty()
    try:
        r = SerialReward(os.ttyname(slave), mode="command", baud=115200)
        assert isinstance(r, Reward)
        log = RewardLog()
        give_and_log(r, log, 120, "trial")
        give_and_log(r, log, 35.4, "manual")
        got = b""
        end = time.monotonic() + 5
        while got.count(b"\n") < 2 and time.monotonic() < end:
            got += os.read(master, 64)
        assert got == b"R 120\nR 35\n"
        assert log.kind == ["trial", "manual"] and log.duration_ms == [120.0, 35.4] and log.t_s[0] <= log.t_s[1]
        taken = log.take()
        assert len(taken) == 2 and len(log) == 0
        r.close()
        r.close()
    finally:
        os.close(master)
        os.close(slave)


def test_serial_ttl_mode_refuses_a_port_without_modem_lines():
    master, slave = os.openpty()
    try:
        with pytest.raises(UserError, match="DTR"):            # a pty has no DTR line: say so, one line
            SerialReward(os.ttyname(slave), mode="ttl")
    finally:
        os.close(master)
        os.close(slave)


def test_reward_driver_choice_and_errors():
    assert isinstance(make_reward("none"), NoReward)
    sim = make_reward("sim")
    sim.give(100)
    sim.give(50)
    assert sim.name == "sim" and sim.juice_ml == pytest.approx(0.15)
    with pytest.raises(UserError, match="reward.port"):
        make_reward("serial", port="")
    with pytest.raises(UserError, match="/dev/no-such-port"):
        make_reward("serial", port="/dev/no-such-port")
    with pytest.raises(ValueError):
        NoReward().give(-1)
