"""Bad input: one ``itloop: error:`` line, exit code 2, and nothing left behind that would
block the corrected command (README, "Data safety": the bad-input table)."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from rig.cli import main
from rig.config import load_config
from rig.steps.record import ensure_screening_plan
from rig.store.reader import read_day

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.toml"


def _with(extra: str) -> str:
    """tiny.toml with ``section.key = value`` lines set (replacing the key if tiny.toml has it)."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in TINY.read_text().splitlines():
        if line.startswith("["):
            current = line.strip()[1:-1]
            sections.setdefault(current, [])
        elif current and line.strip() and not line.startswith("#"):
            sections[current].append(line)
    for line in extra.strip().splitlines():
        key, value = line.split("=", 1)
        section, name = key.strip().split(".", 1)
        rows = [r for r in sections.get(section, []) if r.split("=")[0].strip() != name]
        sections[section] = rows + [f"{name} = {value.strip()}"]
    return "".join(f"[{sec}]\n" + "".join(r + "\n" for r in rows) for sec, rows in sections.items())


def _bomb_png(path: Path, side: int = 100_000) -> None:
    """A 60-byte PNG whose header claims side x side pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


CONFIG_CASES = [
    ("window.start_ms = nan", "'window.start_ms' = nan: expected a finite number"),
    ("rsvp.inter_trial_ms = inf", "'rsvp.inter_trial_ms' = inf: expected a finite number"),
    ("monitor.refresh_hz = inf", "'monitor.refresh_hz' = inf"),
    ("schedule.min_parent_separation_min = inf", "'schedule.min_parent_separation_min' = inf"),
    ("sim.peak_hz = nan", "'sim.peak_hz' = nan"),
    ("images.n_clean = 1000000000", "'images.n_clean' = 1000000000: expected a value in [2, 1000000]"),
    ("experiment.seed = -1", "'experiment.seed' = -1: expected a value in [0, 4294967295]"),
    ("rsvp.stim_on_ms = 7", "'rsvp.stim_on_ms' = 7.0: expected a whole number of frames at monitor.refresh_hz = 60 Hz"),
    ('model.backbone = "resnet9000"', "'model.backbone' = 'resnet9000': expected one of"),
    ('model.weights = "/nowhere.pt"', "'model.weights' = '/nowhere.pt': the file does not exist"),
    ('experiment.name = "two\\nlines"', "'experiment.name' = 'two\\nlines': expected text without control characters"),
    # issue 25
    ('compute.slurm_queue = "gpu\\n#SBATCH --wrap=id"', "'compute.slurm_queue' = 'gpu\\n#SBATCH --wrap=id': expected letters"),
    ('compute.slurm_job_extra = ["--x=1; rm -rf ~"]', "'compute.slurm_job_extra'"),
    ('compute.scheduler = "tcp://host"', "'compute.scheduler' = 'tcp://host': expected"),
    ("sim.clock_offset_s = 50000000.0", "'sim.clock_offset_s' = 50000000.0: expected seconds in [-1e6, 1e6]"),
    ('model.device = "cuda:99"', "'model.device' = 'cuda:99'"),
    ('model.device = "toaster"', "'model.device' = 'toaster'"),
    ("images.size_px = 4096\nimages.n_clean = 100000", "100000 images of 4096 x 4096 px need"),
    ('eye.calibration_file = "/nonexistent/cal.json"', "'eye.calibration_file': calibration file /nonexistent/cal.json"),
]


def _run_fails(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("itloop: error:") and "\n" not in err, err
    assert message in err, err
    return err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("extra, message", CONFIG_CASES, ids=[c[0].split(" =")[0] for c in CONFIG_CASES])
def test_bad_config_is_one_line_before_any_file(tmp_path, capsys, extra, message):
    cfg, out = tmp_path / "c.toml", tmp_path / "out"
    cfg.write_text(_with(extra))
    _run_fails(["day", "run", "--day", "0", "--out", str(out), "--config", str(cfg), "--no-progress"], capsys, message)
    assert _leftovers(out) == []          # no day file, no plan: the corrected command starts clean


def test_corrected_retry_after_a_bad_duration_records(tmp_path, capsys):
    cfg, out = tmp_path / "c.toml", tmp_path / "out"
    cfg.write_text(_with("rsvp.stim_on_ms = 7"))
    argv = ["day", "run", "--day", "0", "--out", str(out), "--config", str(cfg), "--no-progress"]
    _run_fails(argv, capsys, "rsvp.stim_on_ms")
    cfg.write_text(_with("rsvp.stim_on_ms = 50"))
    assert main(argv + ["--max-trials", "1"]) == 0
    assert "stim_on_ms = 50.0" in read_day(out / "day_000.h5").config_text   # the corrected config, not a stale plan


def test_max_trials_must_be_positive(tmp_path, capsys):
    out = tmp_path / "out"
    _run_fails(["day", "run", "--day", "0", "--out", str(out), "--config", str(TINY), "--max-trials", "-3"], capsys,
               "--max-trials -3: expected a number of trials >= 1")
    assert _leftovers(out) == []


def test_a_plan_copied_to_another_day_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    ensure_screening_plan(load_config(TINY), out)
    shutil.copy(out / "day_000.plan.h5", out / "day_001.plan.h5")
    _run_fails(["day", "run", "--day", "1", "--out", str(out), "--config", str(TINY), "--no-progress"], capsys,
               "day_001.plan.h5 is the plan of day 0, not day 1")
    assert _leftovers(out) == ["day_000.plan.h5", "day_001.plan.h5"]


@pytest.mark.parametrize("side, message", [(100_000, "bomb.png refused as a possible decompression bomb"),
                                           (9_000, "bomb.png is 9000 x 9000 pixels")])
def test_decompression_bomb_png_is_one_line(tmp_path, capsys, side, message):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    imgs.mkdir()
    _bomb_png(imgs / "bomb.png", side)
    cfg = tmp_path / "c.toml"
    cfg.write_text(_with(f'images.source = "{imgs}"'))
    _run_fails(["day", "run", "--day", "0", "--out", str(out), "--config", str(cfg), "--no-progress"], capsys,
               message)
    assert _leftovers(out) == []


def test_a_name_with_a_newline_never_reaches_a_file(tmp_path):
    from rig.config import ConfigError, config_from_dict, config_from_toml_text

    with pytest.raises(ConfigError, match="experiment.name"):
        config_from_dict({"experiment": {"name": "a\nb"}})
    # and any string the writer is given round-trips through TOML
    cfg = config_from_dict({"images": {"source": 'C:\\images "set"'}})
    assert config_from_toml_text(cfg.to_toml()).images.source == 'C:\\images "set"'


UNWRITABLE = textwrap.dedent("""
    set -e
    mount -t tmpfs -o size=1m,mode=0755 tmpfs "$RO" && mount -o remount,ro "$RO"
    mount -t tmpfs -o size=64k tmpfs "$FULL" && (head -c 1m /dev/zero > "$FULL/filler" 2>/dev/null || true)
    cd "$ROOT"
    for target in "$RO" "$FULL"; do
      for cmd in "day run --day 0 --config $TINY --no-progress --out $target/exp" \\
                 "day replay $SRC --no-progress --out $target/replayed.h5" \\
                 "day export $SRC --nwb $target/day.nwb" \\
                 "keys --out $target/keys"; do
        set +e
        "$PY" -m rig.cli $cmd > /dev/null 2> "$OUT/err.txt"
        echo "$? $(wc -l < "$OUT/err.txt") $(find "$target" -type f ! -name filler -printf '%P ')|$(cat "$OUT/err.txt")" >> "$OUT/results.txt"
        set -e
      done
    done
""")


@pytest.mark.slow
def test_read_only_and_full_output_folders_are_one_line_naming_the_path(tmp_path):
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs root and unshare -m to mount a read-only and a full tmpfs (root ignores chmod)")
    src_dir = tmp_path / "src"
    assert main(["day", "run", "--day", "0", "--out", str(src_dir), "--config", str(TINY), "--no-progress",
                 "--max-trials", "2"]) == 0
    ro, full, out = tmp_path / "ro", tmp_path / "full", tmp_path / "out"
    for d in (ro, full, out):
        d.mkdir()
    env = dict(os.environ, RO=str(ro), FULL=str(full), OUT=str(out), ROOT=str(ROOT), PY=sys.executable,
               TINY=str(TINY), SRC=str(src_dir / "day_000.h5"),
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    run = subprocess.run(["unshare", "-m", "bash", "-c", UNWRITABLE], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    rows = (out / "results.txt").read_text().splitlines()
    assert len(rows) == 8
    for row, target in zip(rows, [ro] * 4 + [full] * 4):
        status, err = row.split("|", 1)
        code, n_lines, *left = status.split()
        assert code == "2" and n_lines == "1", row                 # exit 2, one line
        assert err.startswith("itloop: error:") and str(target) in err, row   # naming the path
        assert "Traceback" not in err
        assert left == [], row                                      # no file left behind (empty folders may be)


# --------------------------------------------------------------------------- issue 25
def _day0(out: Path, *extra: str) -> list[str]:
    return ["day", "run", "--day", "0", "--out", str(out), "--config", str(TINY), "--no-progress", *extra]


def test_a_busy_live_monitor_port_leaves_nothing_and_the_retry_records(tmp_path, capsys):
    import socket

    cfg, out = tmp_path / "c.toml", tmp_path / "out"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        cfg.write_text(_with(f"live_monitor.enabled = true\nlive_monitor.port = {busy.getsockname()[1]}"))
        argv = ["day", "run", "--day", "0", "--out", str(out), "--config", str(cfg), "--no-progress"]
        _run_fails(argv, capsys, "live monitor: cannot listen on 127.0.0.1")
    assert _leftovers(out) == []
    cfg.write_text(_with("live_monitor.enabled = true\nlive_monitor.port = 0"))
    assert main(argv + ["--max-trials", "1"]) == 0


def test_an_unreadable_calibration_file_leaves_nothing(tmp_path, capsys):
    cal, cfg, out = tmp_path / "cal.json", tmp_path / "c.toml", tmp_path / "out"
    cal.write_text("{not json")
    cfg.write_text(_with(f'eye.calibration_file = "{cal}"'))
    _run_fails(["day", "run", "--day", "0", "--out", str(out), "--config", str(cfg), "--no-progress"], capsys,
               f"'eye.calibration_file': calibration file {cal} cannot be used")
    assert _leftovers(out) == []


def test_a_deeply_nested_toml_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "deep.toml"
    cfg.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    _run_fails(_day0(tmp_path / "out")[:-3] + ["--config", str(cfg), "--no-progress"], capsys,
               "nests tables or arrays too deeply")


def test_an_empty_config_file_says_every_setting_is_a_default(tmp_path, caplog):
    from rig.config import load_config

    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing\n")
    with caplog.at_level("WARNING", logger="rig.config"):
        assert load_config(empty) == load_config(None)
    assert "sets nothing" in caplog.text


def test_a_tampered_committed_trials_is_one_line_and_recover_rebuilds_it(tmp_path, capsys):
    import h5py

    out = tmp_path / "out"
    assert main(_day0(out, "--max-trials", "2")) == 0
    path = out / "day_000.h5"
    with h5py.File(path, "r+") as h5:
        h5.attrs["committed_trials"] = 99
    capsys.readouterr()
    _run_fails(["day", "check", str(path)], capsys, "committed_trials = 99 but it holds 2 trial rows")
    _run_fails(_day0(out, "--resume"), capsys, "committed_trials = 99 but it holds 2 trial rows")
    assert main(["day", "recover", str(path)]) == 0          # no --plan: the damaged file's header serves
    assert read_day(path).attrs["committed_trials"] == 2
    assert main(_day0(out, "--resume", "--max-trials", "1")) == 0


def test_a_torn_clock_segments_attribute_is_reported_and_rewritten(tmp_path, capsys, monkeypatch):
    import h5py._hl.attrs as h5attrs

    from rig.store.repair import check_day

    out = tmp_path / "out"
    assert main(_day0(out, "--max-trials", "2")) == 0
    path = out / "day_000.h5"
    real = h5attrs.AttributeManager.__getitem__

    def torn(self, name):
        if name == "clock_segments":
            raise OSError("Unable to read attribute (wrong B-tree signature)")
        return real(self, name)

    with monkeypatch.context() as m:
        m.setattr(h5attrs.AttributeManager, "__getitem__", torn)
        summary, problems = check_day(path)
        assert summary["trials"] == 2
        assert any("root attribute 'clock_segments' cannot be read" in p for p in problems), problems
        d = read_day(path)
        assert d.unreadable_attrs == ["clock_segments"] and "clock_segments" not in d.attrs
    assert main(_day0(out, "--resume", "--max-trials", "1")) == 0
    assert check_day(path)[1] == [] and read_day(path).attrs["clock_segments"]


def test_export_overwrite_never_replaces_the_journal_or_the_plan(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_day0(out, "--max-trials", "1")) == 0
    for target in ("day_000.h5.journal", "day_000.plan.h5"):
        before = (out / target).read_bytes()
        _run_fails(["day", "export", str(out / "day_000.h5"), "--nwb", str(out / target), "--overwrite"], capsys,
                   "--overwrite replaces only those" if target.endswith("journal") else "not an NWB export")
        assert (out / target).read_bytes() == before


def test_out_that_is_a_file_or_a_link_loop_is_named(tmp_path, capsys):
    afile, loop = tmp_path / "afile", tmp_path / "loop"
    afile.write_text("x")
    loop.symlink_to(loop)
    _run_fails(_day0(afile), capsys, f"--out {afile} is a file, not a folder")
    _run_fails(_day0(loop), capsys, f"--out {loop} is a symbolic link to nothing (or a link loop)")
    _run_fails(["day", "plan", "--day", "1", "--out", str(afile), "--no-progress"], capsys, "is a file, not a folder")


def test_a_folder_named_like_a_day_file_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "day_000.h5").mkdir(parents=True)
    _run_fails(_day0(out), capsys, "day_000.h5 is a folder, not a day file")
    _run_fails(["day", "check", str(out / "day_000.h5")], capsys, "is a folder, not a day file")


def test_a_second_resume_while_recording_names_the_recorder(tmp_path, capsys):
    from rig.store.lock import DayLock

    out = tmp_path / "out"
    assert main(_day0(out, "--max-trials", "1")) == 0
    lock = DayLock(out / "day_000.h5")
    lock.acquire()
    try:
        # the lock is held by this test's own process: a second `--resume` is told who records
        _run_fails(_day0(out, "--resume"), capsys, f"being recorded by PID {os.getpid()}")
    finally:
        lock.release()


def test_a_huge_through_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_day0(out, "--max-trials", "1")) == 0
    _run_fails(["model", "fit", "--days", str(out), "--through", "100000000", "--config", str(TINY), "--no-progress"],
               capsys, "missing: " + str(out / "day_001.h5"))


def test_a_failed_replay_leaves_nothing(tmp_path, capsys, monkeypatch):
    from rig.backends import replay
    from rig.store.dayfile import DayFileError

    out = tmp_path / "out"
    assert main(_day0(out, "--max-trials", "2")) == 0

    def broken(self, trial):
        raise DayFileError("simulated failure half-way through the replay")

    monkeypatch.setattr(replay.ReplayBackend, "run_trial", broken)
    target = tmp_path / "replayed" / "r.h5"
    target.parent.mkdir()
    _run_fails(["day", "replay", str(out / "day_000.h5"), "--out", str(target), "--no-progress"], capsys,
               "simulated failure")
    assert _leftovers(target.parent) == []


def test_tiny_source_images_are_said_to_be_upscaled(tmp_path, caplog):
    from PIL import Image

    from stimuli.images import load_folder

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(imgs / "dot.png")
    Image.new("RGB", (64, 64), (10, 10, 200)).save(imgs / "big.png")
    with caplog.at_level("WARNING", logger="stimuli.images"):
        px, _ = load_folder(imgs, 32)
    assert px.shape == (2, 32, 32, 3)
    assert "1 of 2 images" in caplog.text and "dot.png" in caplog.text and "shorter side 1 px" in caplog.text


def test_the_presenter_refuses_images_with_no_pixels():
    import numpy as np

    from rig.link.protocol import Message
    from rig.presenter.server import PresenterServer, Refused

    server = PresenterServer.__new__(PresenterServer)       # the handler alone: no window, no socket
    msg = Message("load_images", seq=1, body={"start": 0, "n_total": 1, "sha1": ["x"]},
                  arrays={"pixels": np.zeros((1, 0, 0, 3), np.uint8)})
    with pytest.raises(Refused, match="H, W >= 1"):
        server.cmd_load_images(msg)


def test_a_torn_status_attribute_is_recovered_without_the_plan(tmp_path, capsys, monkeypatch):
    import h5py
    import h5py._hl.attrs as h5attrs

    out = tmp_path / "out"
    assert main(_day0(out, "--max-trials", "2")) == 0
    path = out / "day_000.h5"
    real = h5attrs.AttributeManager.__getitem__

    def torn(self, name):                 # the original file's status is torn; a rebuilt file's is not
        if name == "status" and h5py.h5f.get_name(self._id).decode().endswith("day_000.h5") \
                and "recovered_from" not in self:
            raise OSError("Unable to read attribute (addr overflow)")
        return real(self, name)

    monkeypatch.setattr(h5attrs.AttributeManager, "__getitem__", torn)
    _run_fails(["day", "check", str(path)], capsys, "root attribute 'status' cannot be read")
    assert main(["day", "recover", str(path)]) == 0          # no --plan
    monkeypatch.undo()
    d = read_day(path)
    assert d.attrs["committed_trials"] == 2 and d.attrs["status"] == "recording"
    assert main(_day0(out, "--resume", "--max-trials", "1")) == 0
