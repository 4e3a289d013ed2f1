"""Nothing read from a data file is trusted more than the command line (issue 25): a stored
config never chooses a scheduler, a job script, a port or where to write."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from rig.cli import main
from rig.compute.generate import slurm_cluster_kwargs
from rig.config import ConfigError, config_from_dict, load_config, with_local_settings
from rig.store.reader import read_day

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.toml"


def _listener() -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    return srv


def _accepted(srv: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = srv.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_a_stored_tcp_scheduler_is_never_contacted_when_planning(tmp_path, capsys):
    srv = _listener()
    try:
        port = srv.getsockname()[1]
        cfg, out = tmp_path / "c.toml", tmp_path / "exp"
        cfg.write_text(TINY.read_text() + f'\n[compute]\nscheduler = "tcp://127.0.0.1:{port}"\nconnect_timeout_s = 2.0\n')
        assert main(["day", "run", "--day", "0", "--out", str(out), "--config", str(cfg), "--no-progress"]) == 0
        assert f"tcp://127.0.0.1:{port}" in read_day(out / "day_000.h5").config_text   # stored in the day file
        capsys.readouterr()
        assert main(["day", "plan", "--day", "1", "--out", str(out), "--no-progress"]) == 0   # no --config
        printed = capsys.readouterr().out
        assert "compute.scheduler" in printed and "never taken from a data file" in printed
        assert (out / "day_001.plan.h5").exists()
        assert _accepted(srv) == 0                  # the listening socket saw no connection at all
    finally:
        srv.close()


def test_stored_local_settings_are_replaced_by_the_users():
    stored = config_from_dict({"compute": {"scheduler": "tcp://10.0.0.1:8786", "slurm_queue": "gpu"},
                               "live_monitor": {"port": 1234}, "presenter": {"endpoint": "tcp://10.0.0.2:5555"},
                               "rsvp": {"stim_on_ms": 50.0}})
    mine = config_from_dict({"compute": {"scheduler": "slurm"}})
    cfg, dropped = with_local_settings(stored, mine)
    assert cfg.compute.scheduler == "slurm" and cfg.compute.slurm_queue == ""
    assert cfg.live_monitor.port == mine.live_monitor.port and cfg.presenter.endpoint == mine.presenter.endpoint
    assert cfg.rsvp.stim_on_ms == 50.0                       # the experiment's own settings stay the file's
    assert {"compute.scheduler", "compute.slurm_queue", "live_monitor.port", "presenter.endpoint"} <= set(dropped)


@pytest.mark.parametrize("key, value", [
    ("slurm_queue", "gpu\n#SBATCH --wrap=touch /tmp/x"), ("slurm_account", "lab; rm -rf ~"),
    ("slurm_memory", "32GB\n"), ("slurm_walltime", "$(id)"), ("slurm_interface", "ib0 `id`"),
    ("slurm_job_extra", ["--constraint=a100\necho pwned"]), ("slurm_job_extra", ["--x='a b'"]),
    ("scheduler", "tcp://host:8786\n"), ("scheduler", "tcp://host"), ("scheduler", "tcp://a b:1"),
    ("scheduler", "tcp://host:99999"), ("scheduler", "inproc://x"),
])
def test_compute_fields_that_could_be_more_than_one_word_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"config key 'compute.{key}'") as err:
        config_from_dict({"compute": {key: value}})
    assert "\n" not in str(err.value).replace("\\n", "")


def test_slurm_newline_is_one_line_exit_2(tmp_path, capsys):
    cfg, out = tmp_path / "c.toml", tmp_path / "exp"
    cfg.write_text(TINY.read_text() + '\n[compute]\nslurm_queue = "gpu\\n#SBATCH --wrap=id"\n')
    assert main(["day", "run", "--day", "0", "--out", str(out), "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("itloop: error: config key 'compute.slurm_queue'") and "\n" not in err
    assert not out.exists() or list(out.iterdir()) == []


def test_good_slurm_fields_still_reach_the_job_script():
    cfg = config_from_dict({"compute": {"scheduler": "slurm", "slurm_queue": "gpu-a100", "slurm_account": "lab_01",
                                        "slurm_job_extra": ["--constraint=a100", "--exclusive"]}})
    kw = slurm_cluster_kwargs(cfg.compute)
    assert kw["queue"] == "gpu-a100" and kw["account"] == "lab_01"
    assert kw["job_extra_directives"] == ["--constraint=a100", "--exclusive"]
    assert load_config(None).compute.scheduler == "local"


# --------------------------------------------------------------------------- experiment identity
def _two_experiments(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        assert main(["day", "run", "--day", "0", "--out", str(folder), "--config", str(TINY), "--no-progress"]) == 0
    return a, b


def test_experiment_uuid_is_written_on_day_0_and_a_foreign_day_is_refused(tmp_path, capsys):
    import shutil

    from rig.store.experiment import EXPERIMENT_ATTR

    a, b = _two_experiments(tmp_path)
    ua, ub = (read_day(f / "day_000.h5").attrs[EXPERIMENT_ATTR] for f in (a, b))
    assert ua != ub and read_day(a / "day_000.plan.h5").attrs[EXPERIMENT_ATTR] == ua
    shutil.copy(b / "day_000.h5", a / "day_001.h5")          # another experiment's day, renamed
    capsys.readouterr()
    assert main(["model", "fit", "--days", str(a), "--through", "1", "--config", str(TINY), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ua in err and ub in err and "day_001.h5" in err, err
    assert not (a / "model_through_001.h5").exists()
    (a / "day_001.h5").unlink()
    shutil.copy(b / "day_000.h5", a / "day_000.h5")          # a foreign day 0 under the plan of a
    (a / "day_000.h5.journal").unlink()
    shutil.copy(b / "day_000.h5.journal", a / "day_000.h5.journal")
    assert main(["day", "plan", "--day", "1", "--out", str(a), "--config", str(TINY), "--no-progress"]) == 0
    assert read_day(a / "day_001.plan.h5").attrs[EXPERIMENT_ATTR] == ub    # the days' experiment is carried


def test_a_plan_of_another_experiment_is_refused_when_recording(tmp_path, capsys):
    import shutil

    a, b = _two_experiments(tmp_path)
    assert main(["day", "plan", "--day", "1", "--out", str(b), "--config", str(TINY), "--no-progress"]) == 0
    shutil.copy(b / "day_001.plan.h5", a / "day_001.plan.h5")
    capsys.readouterr()
    assert main(["day", "run", "--day", "1", "--out", str(a), "--config", str(TINY), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "belongs to experiment" in err and "day_001.plan.h5" in err, err
    assert not (a / "day_001.h5").exists()


def test_a_legacy_day_without_experiment_uuid_is_accepted_with_a_note(tmp_path, capsys):
    import h5py

    from rig.store.experiment import EXPERIMENT_ATTR

    a = tmp_path / "a"
    assert main(["day", "run", "--day", "0", "--out", str(a), "--config", str(TINY), "--no-progress"]) == 0
    for name in ("day_000.h5", "day_000.plan.h5"):
        with h5py.File(a / name, "r+") as h5:
            del h5.attrs[EXPERIMENT_ATTR]
    capsys.readouterr()
    assert main(["day", "plan", "--day", "1", "--out", str(a), "--config", str(TINY), "--no-progress"]) == 0
    assert "no experiment_uuid" in capsys.readouterr().out
    assert EXPERIMENT_ATTR not in read_day(a / "day_001.plan.h5").attrs


# --------------------------------------------------------------------------- live monitor
def test_the_live_monitor_refuses_a_foreign_host_header():
    import http.client

    from rig.monitor.server import LiveMonitor, host_allowed
    from rig.monitor.state import MonitorState

    with LiveMonitor(MonitorState(session_id="s"), "127.0.0.1", 0) as mon:
        for host, code in [(f"127.0.0.1:{mon.port}", 200), (f"localhost:{mon.port}", 200),
                           ("evil.example:80", 421), (f"evil.example:{mon.port}", 421), ("127.0.0.1:1", 421)]:
            conn = http.client.HTTPConnection("127.0.0.1", mon.port, timeout=5)
            conn.putrequest("GET", "/state.json", skip_host=True)
            conn.putheader("Host", host)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status == code, (host, resp.status)
            assert (b"session_id" in body) == (code == 200)
    assert host_allowed("[::1]:8765", 8765) and host_allowed("127.0.0.1", 8765)
    assert not host_allowed(None, 8765) and not host_allowed("127.0.0.1.evil.example", 8765)


# --------------------------------------------------------------------------- presenter restart (item 8)
class _Shown:
    """The parts of a presenter's TrialResult the simulated spike source reads."""

    def __init__(self, t0: float, k: int = 3):
        self.shown = k
        self.onset_s = t0 + 0.3 + 0.2 * np.arange(k)
        self.frame_time_s = np.r_[t0, self.onset_s, self.onset_s[-1] + 0.1]

    def image_off_s(self):
        return self.onset_s + 0.1


def test_a_restarted_presenter_does_not_send_the_simulated_acquisition_clock_back():
    from rig.backend import SessionInfo, Trial
    from rig.backends.factory import build_sim_monkey
    from rig.backends.presenter import SimSpikeSource

    cfg = load_config(TINY)
    src = SimSpikeSource(build_sim_monkey(cfg))
    src.open(SessionInfo("s", 0, n_channels=cfg.sim.n_channels), np.zeros((4, 48, 48, 3), np.uint8))
    ends = []
    for i, t0 in enumerate([100.0, 101.5, 103.0, 0.5, 2.0]):      # the presenter restarts before trial 3
        rec = src.record(Trial(i, (0, 1, 2), (0, 1, 2)), _Shown(t0), t0 + 1.2)
        assert rec["start_acq_s"] < rec["end_acq_s"] and np.all(np.diff(rec["sync_acq_s"]) > 0)
        ends.append((rec["start_acq_s"], rec["end_acq_s"]))
    flat = np.ravel(ends)
    assert np.all(np.diff(flat) > 0), flat                      # the acquisition clock only runs forward


def test_day_check_reports_acquisition_times_that_go_back(tmp_path):
    import h5py

    from rig.store.repair import check_day

    out = tmp_path / "out"
    assert main(["day", "run", "--day", "0", "--out", str(out), "--config", str(TINY), "--no-progress",
                 "--max-trials", "3"]) == 0
    path = out / "day_000.h5"
    assert check_day(path)[1] == []
    with h5py.File(path, "r+") as h5:
        h5["trials/start_acq_s"][2] -= 100.0
        h5["trials/end_acq_s"][2] -= 100.0
    problems = check_day(path)[1]
    assert any("acquisition-clock times go backwards at trial row 2" in p for p in problems), problems


def test_resuming_another_experiments_day_is_refused(tmp_path, capsys):
    import shutil

    a, b = _two_experiments(tmp_path)
    assert main(["day", "plan", "--day", "1", "--out", str(b), "--config", str(TINY), "--no-progress"]) == 0
    assert main(["day", "run", "--day", "1", "--out", str(b), "--config", str(TINY), "--no-progress",
                 "--max-trials", "1"]) == 0
    for name in ("day_001.h5", "day_001.h5.journal"):
        shutil.copy(b / name, a / name)
    before = (a / "day_001.h5").read_bytes()
    capsys.readouterr()
    assert main(["day", "run", "--day", "1", "--out", str(a), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "belongs to experiment" in err and "day_001.h5" in err, err
    assert (a / "day_001.h5").read_bytes() == before and not (a / "day_001.h5.lock").exists()
