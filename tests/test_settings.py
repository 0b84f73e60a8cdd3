from __future__ import annotations

import logging
import re
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


def test_retired_key_is_accepted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An old file naming node.dimse_timeout_seconds (read by nothing) still loads."""
    cfg = tmp_path / "old.toml"
    cfg.write_text("[node]\ndimse_timeout_seconds = 60\n")
    with caplog.at_level(logging.WARNING, logger="daemon.settings_parse"):
        s = load_settings(cfg, env={}, base_dir=tmp_path)
    assert s == load_settings(None, env={}, base_dir=tmp_path)
    assert "node.dimse_timeout_seconds is retired" in caplog.text
    assert "remove it" in caplog.text


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


def test_delivery_and_new_pipeline_defaults(tmp_path: Path) -> None:
    s = load_settings(None, env={}, base_dir=tmp_path)
    d = s.delivery
    assert (d.poll_seconds, d.batch_size, d.retry_initial_seconds, d.retry_max_seconds) == (
        2,
        50,
        10,
        600,
    )
    assert (d.give_up_after_hours, d.association_timeout_seconds, d.dimse_timeout_seconds) == (
        168,
        30,
        120,
    )
    assert (s.pipeline.segmentation, s.pipeline.segmentation_model_dir) == ("unet", "")
    assert s.pipeline.radiomics is True
    env = {
        "KI67NODE_DELIVERY__BATCH_SIZE": "5",
        "KI67NODE_PIPELINE__SEGMENTATION": "nnunet",
        "KI67NODE_PIPELINE__SEGMENTATION_MODEL_DIR": f'"{tmp_path}"',
        "KI67NODE_PIPELINE__RADIOMICS": "false",
    }
    s = load_settings(None, env=env, base_dir=tmp_path)
    assert (s.delivery.batch_size, s.pipeline.segmentation, s.pipeline.radiomics) == (
        5,
        "nnunet",
        False,
    )


@pytest.mark.parametrize(
    ("env", "key", "message"),
    [
        ({"DELIVERY__POLL_SECONDS": "0"}, "delivery.poll_seconds", "must be > 0"),
        ({"DELIVERY__POLL_SECONDS": '"soon"'}, "delivery.poll_seconds", "must be a number"),
        ({"DELIVERY__BATCH_SIZE": "0"}, "delivery.batch_size", "must be 1-1000"),
        ({"DELIVERY__BATCH_SIZE": "2.5"}, "delivery.batch_size", "must be an integer"),
        ({"DELIVERY__RETRY_INITIAL_SECONDS": "-1"}, "delivery.retry_initial_seconds", "> 0"),
        (
            {"DELIVERY__RETRY_INITIAL_SECONDS": "60", "DELIVERY__RETRY_MAX_SECONDS": "30"},
            "delivery.retry_max_seconds",
            ">= retry_initial_seconds",
        ),
        ({"DELIVERY__GIVE_UP_AFTER_HOURS": "0"}, "delivery.give_up_after_hours", "must be > 0"),
        (
            {"DELIVERY__ASSOCIATION_TIMEOUT_SECONDS": "0"},
            "delivery.association_timeout_seconds",
            "<= 3600",
        ),
        ({"DELIVERY__DIMSE_TIMEOUT_SECONDS": "7200"}, "delivery.dimse_timeout_seconds", "3600"),
        ({"DELIVERY__BOGUS": "1"}, "delivery.bogus", "unknown key"),
        ({"PIPELINE__SEGMENTATION": '"sam"'}, "pipeline.segmentation", "'unet' or 'nnunet'"),
        (
            {"PIPELINE__SEGMENTATION_MODEL_DIR": '"/no/such/model"'},
            "pipeline.segmentation_model_dir",
            "does not exist",
        ),
        ({"PIPELINE__RADIOMICS": '"yes"'}, "pipeline.radiomics", "true or false"),
        (
            {"PIPELINE__SEGMENTATION": '"nnunet"'},
            "pipeline.segmentation_model_dir",
            "needs the trained model folder",
        ),
    ],
    ids=[
        "poll-zero",
        "poll-text",
        "batch-zero",
        "batch-float",
        "initial-negative",
        "max-below-initial",
        "give-up-zero",
        "assoc-timeout-zero",
        "dimse-timeout-huge",
        "unknown-key",
        "segmentation-backend",
        "segmentation-dir",
        "radiomics-text",
        "nnunet-without-folder",
    ],
)
def test_bad_delivery_and_pipeline_values_name_the_key(
    tmp_path: Path, env: dict[str, str], key: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        load_settings(None, env={f"KI67NODE_{k}": v for k, v in env.items()}, base_dir=tmp_path)
    assert message in dict(info.value.problems)[key]


def _destinations_toml(tmp_path: Path, body: str) -> Path:
    cfg = tmp_path / "dest.toml"
    cfg.write_text(body)
    return cfg


def test_dicomweb_and_folder_destinations_are_read(tmp_path: Path) -> None:
    cfg = _destinations_toml(
        tmp_path,
        '[[destinations]]\nname = "web"\ntype = "dicomweb"\n'
        'url = "http://127.0.0.1:8042/dicom-web/"\nusername = "ki67"\npassword = "s3cret"\n'
        '[[destinations]]\nname = "archive"\ntype = "folder"\npath = "exports"\n',
    )
    s = load_settings(cfg, env={}, base_dir=tmp_path)
    web, archive = s.destinations
    assert (web.type, web.url, web.username, web.password) == (
        "dicomweb",
        "http://127.0.0.1:8042/dicom-web",
        "ki67",
        "s3cret",
    )
    assert "s3cret" not in repr(s)
    assert (archive.type, archive.path) == ("folder", "exports")


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ('type = "dicomweb"', "destinations[0].url", "STOW-RS base URL"),
        ('type = "dicomweb"\nurl = "ftp://pacs/dicom-web"', "destinations[0].url", "STOW-RS"),
        (
            'type = "dicomweb"\nurl = "http://pacs/dw"\nusername = "u"',
            "destinations[0].username",
            "given together",
        ),
        (
            'type = "dicomweb"\nurl = "http://pacs/dw"\npassword = 3',
            "destinations[0].password",
            "string",
        ),
        (
            'type = "dicom"\nae_title = "P"\nhost = "h"\nport = 104\nurl = "http://x"',
            "destinations[0].url",
            "not used by type 'dicom'",
        ),
        ('type = "folder"', "destinations[0].path", "must be a folder path"),
        ('type = "folder"\npath = "../outside"', "destinations[0].path", "stay under data_dir"),
        ('type = "smtp"', "destinations[0].type", "'dicom', 'folder' or 'dicomweb'"),
        (
            'type = "dicomweb"\nurl = "https://u:pw@pacs/dw"',
            "destinations[0].url",
            "must not contain credentials",
        ),
    ],
    ids=[
        "no-url",
        "ftp-url",
        "user-without-password",
        "password-not-string",
        "url-on-dicom",
        "folder-no-path",
        "folder-escapes",
        "unknown-type",
        "credentials-in-url",
    ],
)
def test_bad_destinations_name_the_key(tmp_path: Path, body: str, key: str, message: str) -> None:
    cfg = _destinations_toml(tmp_path, f'[[destinations]]\nname = "d"\n{body}\n')
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        load_settings(cfg, env={}, base_dir=tmp_path)
    assert message in dict(info.value.problems)[key]


def test_check_config_lists_the_destinations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--config", str(REPO / "config/ki67node.toml")]) == 0
    assert "destinations: outbox (folder" in capsys.readouterr().out
    cfg = _destinations_toml(
        tmp_path,
        '[[destinations]]\nname = "pacs"\ntype = "dicom"\nae_title = "PACS"\nhost = "h"\n'
        'port = 104\n[[destinations]]\nname = "web"\ntype = "dicomweb"\nurl = "https://w/dw"\n'
        'username = "u"\npassword = "hidden-pw"\n',
    )
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "pacs (C-STORE to PACS@h:104); web (STOW-RS to https://w/dw)" in out
    assert "hidden-pw" not in out
