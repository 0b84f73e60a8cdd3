"""``[[sources]]`` and ``[priors]`` in the configuration, ``check-config`` and ``ki67node echo``
against a pynetdicom Verification SCP (fast lane; the Orthanc tests are in test_sources.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from daemon.cli import main
from daemon.errors import ConfigError, SourceError
from daemon.settings import Settings, load_settings
from daemon.sources.base import SeriesFolder, check_count, check_uid
from daemon.sources.config import SourceConfig
from daemon.sources.factory import find_source
from tests.conftest import free_port

DICOM = '[[sources]]\nname = "pacs"\ntype = "dicom"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4242\n'
WEB = '[[sources]]\nname = "web"\ntype = "dicomweb"\nurl = "https://pacs.example/dicom-web/"\n'


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "c.toml"
    path.write_text(text + f'\n[node]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    return load_settings(path, env={})


def problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_sources_and_priors_are_parsed(tmp_path: Path) -> None:
    text = (
        DICOM
        + 'retrieve = "move"\ntimeout_seconds = 20\n'
        + WEB
        + 'username = "u"\npassword = "s3cret"\n'
        '[priors]\nenabled = true\nsource = "pacs"\nlookback_years = 5\nmax_studies = 2\n'
    )
    s = load(tmp_path, text)
    pacs, web = s.sources
    assert pacs == SourceConfig(
        "pacs", "dicom", ae_title="PACS", host="127.0.0.1", port=4242, retrieve="move",
        timeout_seconds=20.0,
    )  # fmt: skip
    assert (web.url, web.username, web.password) == (
        "https://pacs.example/dicom-web",
        "u",
        "s3cret",
    )
    assert "s3cret" not in repr(web)
    priors = s.priors
    assert (priors.enabled, priors.source, priors.lookback_years, priors.max_studies) == (
        True, "pacs", 5, 2,
    )  # fmt: skip
    assert priors.send_results is False
    assert find_source(s.sources, "web") is web
    with pytest.raises(SourceError, match="no \\[\\[sources\\]\\] entry named 'x' \\(pacs, web\\)"):
        find_source(s.sources, "x")


def test_defaults_have_no_sources_and_priors_off(tmp_path: Path) -> None:
    s = load(tmp_path, "")
    assert s.sources == ()
    assert s.priors.enabled is False


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (DICOM.replace('"dicom"', '"folder"'), "sources[0].type", "must be 'dicom' or 'dicomweb'"),
        ('[[sources]]\nname = "w"\ntype = "dicomweb"\n', "sources[0].url", "DICOMweb base URL"),
        (WEB.replace("https://", "https://u:p@"), "sources[0].url", "must not contain credentials"),
        (WEB + 'username = "u"\n', "sources[0].username", "given together"),
        (DICOM + 'retrieve = "fetch"\n', "sources[0].retrieve", "must be 'get' or 'move'"),
        (DICOM.replace("4242", "0"), "sources[0].port", "integer 1-65535"),
        (DICOM.replace('"PACS"', '"A/B"'), "sources[0].ae_title", "printable ASCII"),
        (DICOM + 'url = "http://x"\n', "sources[0].url", "not used by type 'dicom'"),
        (WEB + 'retrieve = "get"\n', "sources[0].retrieve", "not used by type 'dicomweb'"),
        (DICOM + "timeout_seconds = 0\n", "sources[0].timeout_seconds", "> 0 and <= 3600"),
        (DICOM + "colour = 1\n", "sources[0].colour", "unknown key"),
        (DICOM + DICOM, "sources[1].name", "duplicate source name 'pacs'"),
        ('sources = "pacs"\n', "sources", "array of tables"),
        ("[priors]\nenabled = true\n", "priors.source", "required when priors.enabled"),
        (DICOM + '[priors]\nsource = "nas"\n', "priors.source", "no [[sources]] entry named 'nas'"),
        ("[priors]\nmax_studies = 0\n", "priors.max_studies", "between 1 and 100"),
        ("[priors]\nlookback = 3\n", "priors.lookback", "unknown key"),
    ],
    ids=[
        "bad-type", "missing-url", "url-credentials", "half-credentials", "bad-retrieve",
        "bad-port", "bad-ae", "unused-key", "unused-key-web", "bad-timeout", "unknown-key",
        "duplicate", "not-an-array", "priors-without-source", "unknown-priors-source",
        "priors-range", "priors-unknown-key",
    ],
)  # fmt: skip
def test_bad_keys_are_reported_with_their_name(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    found = problems(tmp_path, text)
    assert any(k == key and message in m for k, m in found), found


def test_check_config_lists_the_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path}"\n' + DICOM + WEB, encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sources: pacs (C-FIND + C-GET at PACS@127.0.0.1:4242); web (QIDO-RS/WADO-RS" in out
    path.write_text(DICOM + 'retrieve = "push"\n', encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 1
    assert "sources[0].retrieve: must be 'get' or 'move'" in capsys.readouterr().err


@pytest.fixture
def echo_scp() -> Iterator[int]:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        yield port
    finally:
        server.shutdown()


def test_echo_command(tmp_path: Path, echo_scp: int, capsys: pytest.CaptureFixture[str]) -> None:
    dead = free_port()
    path = tmp_path / "c.toml"
    path.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n'
        + DICOM.replace("4242", str(echo_scp))
        + DICOM.replace('"pacs"', '"down"').replace("4242", str(dead))
        + "connect_timeout_seconds = 2\n"
        + f'[[destinations]]\nname = "store"\ntype = "dicom"\nae_title = "PACS"\n'
        f'host = "127.0.0.1"\nport = {echo_scp}\n'
        '[[destinations]]\nname = "files"\ntype = "folder"\npath = "exports"\n',
        encoding="utf-8",
    )
    assert main(["echo", "pacs", "--config", str(path)]) == 0
    assert "source pacs (PACS@127.0.0.1:" in capsys.readouterr().out
    assert main(["echo", "store", "--config", str(path)]) == 0
    assert "answered C-ECHO" in capsys.readouterr().out
    assert main(["echo", "files", "--config", str(path)]) == 0
    assert main(["echo", "down", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be reached" in err
    assert main(["echo", "nobody", "--config", str(path)]) == 1
    assert "no source or destination named 'nobody' (pacs, down, store, files)" in (
        capsys.readouterr().err
    )


def test_uids_that_would_leave_the_folder_are_refused(tmp_path: Path) -> None:
    for bad in ("..", "1.2/3", "1.2.3a", "1" * 65, ""):
        with pytest.raises(SourceError, match="is not a DICOM UID"):
            check_uid(bad, "SeriesInstanceUID")


def test_a_partial_retrieval_is_an_error_and_removable(tmp_path: Path) -> None:
    folder = SeriesFolder(tmp_path / "got")
    folder.write("1.2.3", b"x")
    folder.write("1.2.4", b"y")
    with pytest.raises(SourceError, match="returned 2 of 3 instances; the partial retrieval"):
        check_count("source pacs", len(folder.files), 3, "C-GET")
    folder.remove()
    assert list((tmp_path / "got").iterdir()) == []
    with pytest.raises(SourceError, match="returned no instance"):
        check_count("source pacs", 0, None, "C-GET")
