"""The eye trace, rewards and calibration in the day file: written per trial, cut back with
uncommitted trials on resume, rebuilt from the journal, read back by ``read_day`` (DayData.eye, .rewards, .calibration)."""
from __future__ import annotations

import json

import h5py
import numpy as np

from rig.backend import Trial, TrialRecord, TrialRows
from rig.session.schedule import build_schedule
from rig.sources.calibration import CalibrationMap
from rig.store.dayfile import DayWriter
from rig.store.journal import rows_from_json, rows_to_json
from rig.store.reader import read_day
from stimuli.images import builtin_images
from stimuli.stimset import StimulusSet


def _rows(ti: int, n_eye: int, rewarded: bool) -> TrialRows:
    t = 10.0 + ti
    eye_t = t + np.arange(n_eye) / 500.0
    rec = TrialRecord(ti, 2, True, [t, t + 0.2], [6, 6], [6, 6], [False, False], [t, t + 0.2], [t + 1, t + 1.2],
                      [t + 1.1], [0], end_presenter_s=t + 0.5, eye_presenter_s=eye_t,
                      eye_x_deg=np.sin(eye_t), eye_y_deg=np.cos(eye_t), eye_pupil=np.full(n_eye, 900.0),
                      reward_presenter_s=[t + 0.45] if rewarded else [], reward_ms=[80.0] if rewarded else [],
                      reward_kind=[0] if rewarded else [])
    return TrialRows(Trial(ti, (0, 1), (2 * ti, 2 * ti + 1)), rec, np.array([t + 1, t + 1.2]), np.ones((2, 1)),
                     np.ones(2, bool), eye_acq_s=eye_t + 1.0, reward_acq_s=np.array([t + 1.45]) if rewarded else np.zeros(0))


def test_eye_and_rewards_round_trip_through_day_file_and_journal(tmp_path):
    ss = StimulusSet(builtin_images(2, 16, 0))
    sch = build_schedule(ss.parent, 3, 2, 0, 0.3)
    path = tmp_path / "day.h5"
    w = DayWriter.create(path, config_text="", day=1, session_id="s", stimuli=ss, schedule_stim_index=sch.stim_index,
                         presentations_per_trial=2, seconds_per_presentation=0.3, channel_names=["a"],
                         backend="presenter", window_ms=(70.0, 170.0))
    w.append_trial(_rows(0, 300, True))
    w.append_trial(_rows(1, 120, False))
    cmap = CalibrationMap("affine", np.array([[0.1, -0.2], [1.0, 0.0], [0.0, 1.0]]))
    w.set_calibration(cmap.to_dict())
    w.close()
    _d = read_day(path)
    eye, rewards, cal = _d.eye, _d.rewards, _d.calibration
    assert len(eye["t_presenter_s"]) == 420 and np.bincount(eye["trial_index"]).tolist() == [300, 120]
    np.testing.assert_allclose(eye["t_acq_s"], eye["t_presenter_s"] + 1.0)
    np.testing.assert_allclose(eye["x_deg"], np.sin(eye["t_presenter_s"]), atol=1e-6)   # float32 storage
    assert rewards["trial_index"].tolist() == [0] and rewards["duration_ms"].tolist() == [80.0]
    assert np.isclose(rewards["t_acq_s"][0], 11.45)
    np.testing.assert_allclose(CalibrationMap.from_dict(cal).coef, cmap.coef)
    with h5py.File(path, "r") as h5:
        assert h5["eye/x_deg"].attrs["unit"] == "deg" and "description" in h5["rewards/kind"].attrs
    # an interrupted third trial: its eye rows are written, the trial is not committed -> cut back on resume
    with h5py.File(path, "r+") as h5:
        for name in h5["eye"]:
            ds = h5["eye"][name]
            ds.resize(ds.shape[0] + 50, axis=0)
    w = DayWriter.resume(path)
    w.close()
    eye2 = read_day(path).eye
    assert len(eye2["t_presenter_s"]) == 420
    with h5py.File(path, "r") as h5:
        assert h5["eye/t_presenter_s"].shape[0] == 420
    assert len(read_day(path).trials["trial_index"]) == 2
    # the journal carries the eye trace and rewards (recovery rebuilds them)
    again = rows_from_json(rows_to_json(_rows(3, 40, True)))
    np.testing.assert_array_equal(again.record.eye_y_deg, _rows(3, 40, True).record.eye_y_deg)
    assert again.record.reward_kind.tolist() == [0] and again.eye_acq_s is not None
    assert json.loads(rows_to_json(_rows(4, 0, False))).get("eye_presenter_s") is None   # no eye: nothing added
