"""Config: defaults == config.toml, overrides key by key, errors name the key."""
from pathlib import Path

import pytest

from rig.config import Config, ConfigError, config_from_toml_text, frames_for, load_config, parse_toml

ROOT = Path(__file__).resolve().parents[1]


def test_config_toml_equals_builtin_defaults():
    assert parse_toml((ROOT / "config.toml").read_text()) == Config().to_dict()


def test_every_key_in_config_toml_has_a_comment():
    for line in (ROOT / "config.toml").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#") and not line.startswith("curve_"):
            assert "#" in line, f"config.toml line without a comment: {line}"


def test_user_file_overrides_key_by_key(tmp_path):
    f = tmp_path / "my.toml"
    f.write_text("[rsvp]\nstim_on_ms = 50\n[sim]\nn_channels = 4\n")
    cfg = load_config(f)
    assert cfg.rsvp.stim_on_ms == 50.0 and isinstance(cfg.rsvp.stim_on_ms, float)
    assert cfg.rsvp.mask_ms == 100.0  # untouched keys keep their defaults
    assert cfg.sim.n_channels == 4 and cfg.sim.peak_hz == 200.0


def test_round_trip_through_stored_text():
    cfg = load_config(overrides={"experiment": {"epsilons": [0.25, 1.0]}, "model": {"backbone": "tiny"}})
    again = config_from_toml_text(cfg.to_toml())
    assert again == cfg


@pytest.mark.parametrize("text, must_mention", [
    ("[rsvp]\nstim_on_ms = 100\nbogus = 1\n", "rsvp.bogus"),
    ("[nosuchsection]\na = 1\n", "nosuchsection"),
    ("[rsvp]\nstim_on_ms = \"fast\"\n", "rsvp.stim_on_ms"),
    ("[schedule]\nrepeats = 1.5\n", "schedule.repeats"),
    ("[screening]\nrepeats = 0\n", "screening.repeats"),
    ("[schedule]\nrepeats = 0\n", "schedule.repeats"),
    ("[window]\nstart_ms = 170\nend_ms = 70\n", "window.end_ms"),
    ("[experiment]\nepsilons = [1.0, -0.5]\n", "experiment.epsilons"),
    ("[model]\nlayer = \"layer9\"\n", "model.layer"),
    ("[report]\nfigure1a_layer = \"fc\"\n", "report.figure1a_layer"),
    ("[readout]\nmethod = \"lasso\"\n", "readout.method"),
    ("[model]\nchannels_last = 1\n", "model.channels_last"),
    ("rsvp = 3\n", "rsvp"),
])
def test_errors_name_the_key(tmp_path, text, must_mention):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    msg = str(exc.value)
    assert must_mention in msg
    assert "expected" in msg or "unknown" in msg
    assert "\n" not in msg  # one message


def test_malformed_toml_and_missing_file(tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text("[rsvp\nstim_on_ms = 100\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_frames_for():
    assert frames_for(100, 60) == 6 and frames_for(100, 100) == 10 and frames_for(100, 144) is None


def test_sim_section_is_the_simulators_own_parameters():
    """[sim] has SimParams' fields and rules (declared once, in sim.params): a negative
    drive_gain fails when the config is loaded, naming the key."""
    import dataclasses

    from rig.config import SimConfig
    from sim.params import SimParams

    assert [f.name for f in dataclasses.fields(SimConfig)] == [f.name for f in dataclasses.fields(SimParams)]
    with pytest.raises(ConfigError, match=r"'sim.drive_gain' = -0.5: expected"):
        load_config(overrides={"sim": {"drive_gain": -0.5}})


@pytest.mark.parametrize("section, key, value, words", [
    ("rsvp", "stim_on_ms", 0.0, "a value in (0, 60000] (ms)"),        # declared range, open at 0
    ("readout", "score_train_fraction", 1.0, "a fraction in (0, 1)"),   # declared wording
    ("fixation", "calibration_points", 7, "one of [5, 9]"),           # declared choices
    ("subject", "id", "M 17", "letters, digits and '-' only"),        # declared pattern
    ("compute", "deadline", "tomorrow", '"" (none), a clock time'),   # declared test
    ("presenter", "endpoint", "tcp://a\nb", "text without control characters"),   # every text key
])
def test_declared_rules_are_checked_generically(section, key, value, words):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides={section: {key: value}})
    assert f"'{section}.{key}' = {value!r}: expected {words}" in str(exc.value)
