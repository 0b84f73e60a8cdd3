from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main
from daemon.errors import ConfigError
from daemon.settings import load_settings

REPO = Path(__file__).resolve().parent.parent


def test_default_config_file_is_valid_and_matches_embedded_defaults(tmp_path: Path) -> None:
    from_file = load_settings(REPO / "config/ki67node.toml", env={}, base_dir=tmp_path)
    embedded = load_settings(None, env={}, base_dir=tmp_path)
    assert from_file == embedded
    assert from_file.node.port == 11112
    assert from_file.database_url == f"sqlite:///{tmp_path / 'var' / 'ki67node.db'}"


def test_env_overrides_are_typed(tmp_path: Path) -> None:
    env = {
        "KI67NODE_NODE__PORT": "11113",
        "KI67NODE_NODE__ALLOWED_CALLING_AETS": '["PACS", "MODALITY"]',
        "KI67NODE_INGEST__SERIES_STABLE_SECONDS": "2.5",
        "KI67NODE_PIPELINE__DEVICE": "cpu",
    }
    s = load_settings(None, env=env, base_dir=tmp_path)
    assert s.node.port == 11113
    assert s.node.allowed_calling_aets == ("PACS", "MODALITY")
    assert s.ingest.series_stable_seconds == 2.5
    assert s.pipeline.device == "cpu"


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[node]\nport = "eleven"\nae_title = "A/B"\nmax_associations = 0\nbogus = 1\n'
        '[pipeline]\ndevice = "tpu"\n'
        '[[destinations]]\nname = "pacs"\ntype = "dicom"\nport = 99999\n'
        "[nonsense]\n"
    )
    with pytest.raises(ConfigError, match="node.port") as info:
        load_settings(cfg, env={}, base_dir=tmp_path)
    keys = {key for key, _ in info.value.problems}
    assert {
        "node.port",
        "node.ae_title",
        "node.max_associations",
        "node.bogus",
        "pipeline.device",
        "destinations[0].port",
        "destinations[0].ae_title",
        "destinations[0].host",
        "nonsense",
    } <= keys


def test_unknown_env_section_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KI67NODE_NOPE__X"):
        load_settings(None, env={"KI67NODE_NOPE__X": "1"}, base_dir=tmp_path)


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(None, env={}, base_dir=tmp_path)
    with pytest.raises(AttributeError, match="cannot assign"):
        s.node.port = 1  # type: ignore[misc]


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = main(["check-config", "--config", str(REPO / "config/ki67node.toml")])
    assert good == 0
    assert "configuration OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = -1\n[node]\nport = 70000\n")
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "http.port" in err and "node.port" in err and "2 problem(s)" in err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 1
    assert "does not exist" in capsys.readouterr().err
