"""Settings: TOML file + ``KI67NODE_<SECTION>__<KEY>`` environment overrides.

The file is validated as a whole into frozen dataclasses; every problem is
reported with its key (``ki67node check-config``). Unknown keys are errors, not
silently ignored, so a typo never falls back to a default; a retired key is
still accepted, with a warning that says to remove it. Tables and variables are
read by :mod:`daemon.settings_parse`, ``[[destinations]]`` by
:mod:`daemon.destinations`, ``[[sources]]`` by :mod:`daemon.sources.config`; the sections and their checks live here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.destinations import Destination, parse_destinations
from daemon.errors import ConfigError
from daemon.peers import valid_ae_title
from daemon.settings_parse import apply_env, parse_section
from daemon.sources.config import PriorsSettings, SourceConfig, parse_sources, validate_priors


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "KI67NODE"
    bind: str = "0.0.0.0"
    port: int = 11112
    data_dir: Path = Path("var")
    allowed_calling_aets: tuple[str, ...] = ()
    require_called_aet: bool = False  # true: refuse requests not addressed to ae_title
    max_associations: int = 16
    max_pdu_bytes: int = 4_194_304
    max_instance_bytes: int = 536_870_912
    acse_timeout_seconds: float = 30.0
    network_timeout_seconds: float = 60.0
    other_storage: str = "ignore"  # ignore | refuse


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool = False
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    handshake_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""
    busy_timeout_ms: int = 30_000


@dataclass(frozen=True)
class IngestSettings:
    series_stable_seconds: float = 10.0
    sweep_interval_seconds: float = 1.0


@dataclass(frozen=True)
class FilterSettings:
    max_slice_thickness_mm: float = 1.5
    require_contrast: bool = True
    # Matched as whole words in SeriesDescription / ProtocolName.
    contrast_keywords: tuple[str, ...] = tuple(
        "+c gd gad gado post contrast kontrast ce km mdc".split()
    )
    min_slices: int = 64
    # Lossy-compressed source images change the radiomics features the model
    # reads; refused unless a site accepts that (the SR then says so).
    accept_lossy: bool = False


@dataclass(frozen=True)
class PipelineSettings:
    device: str = "auto"
    model_dir: str = ""
    workers: int = 1
    job_max_attempts: int = 3
    job_retry_backoff_seconds: float = 30.0
    job_timeout_seconds: float = 1800.0
    segmentation: str = "unet"  # unet | nnunet
    segmentation_model_dir: str = ""  # empty = bundled
    radiomics: bool = True


SEGMENTATION_BACKENDS = ("unet", "nnunet")


@dataclass(frozen=True)
class DeliverySettings:
    """How the outbox is delivered: polling, batching, retries and network timeouts."""

    poll_seconds: float = 2.0
    batch_size: int = 50
    retry_initial_seconds: float = 10.0
    retry_max_seconds: float = 600.0
    give_up_after_hours: float = 168.0
    association_timeout_seconds: float = 30.0
    dimse_timeout_seconds: float = 120.0


@dataclass(frozen=True)
class FollowupSettings:
    """Surveillance rules (issue 6): who goes on the follow-up list, when, and what is growth."""

    max_diameter_mm: float = 30.0
    default_asymptomatic: bool = True  # used when no flag was recorded for the patient
    growth_threshold_percent: float = 15.0
    interval_months_high: int = 6
    interval_months_low: int = 12
    overdue_grace_days: int = 30


@dataclass(frozen=True)
class SchedulerSettings:
    """The persisted periodic jobs (APScheduler): follow-up flagging and spool retention."""

    enabled: bool = True
    followup_check_minutes: int = 60
    retention_check_hours: int = 24


@dataclass(frozen=True)
class RetentionSettings:
    spool_days: int = 0  # 0 = keep received images forever


@dataclass(frozen=True)
class HttpSettings:
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 8081


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"


@dataclass(frozen=True)
class DatabaseTarget:
    """The database a component connects to: ``[database]`` with its URL resolved
    (an empty ``database.url`` means SQLite under ``node.data_dir``)."""

    url: str
    busy_timeout_ms: int = 30_000


@dataclass(frozen=True)
class Settings:
    """The whole configuration. Only the composition root (``serve``, the CLI) reads
    it; every component takes the section(s) it uses (tests/test_architecture.py)."""

    node: NodeSettings = field(default_factory=NodeSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    filter: FilterSettings = field(default_factory=FilterSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    destinations: tuple[Destination, ...] = ()
    sources: tuple[SourceConfig, ...] = ()
    priors: PriorsSettings = field(default_factory=PriorsSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    followup: FollowupSettings = field(default_factory=FollowupSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    # Derived paths: everything the node writes lives under data_dir.
    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def spool_dir(self) -> Path:
        return self.node.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.node.data_dir / "outbox"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.node.data_dir / 'ki67node.db').as_posix()}"

    @property
    def database_target(self) -> DatabaseTarget:
        return DatabaseTarget(self.database_url, self.database.busy_timeout_ms)


_SECTIONS: dict[str, type] = {
    "node": NodeSettings,
    "tls": TlsSettings,
    "database": DatabaseSettings,
    "ingest": IngestSettings,
    "filter": FilterSettings,
    "pipeline": PipelineSettings,
    "delivery": DeliverySettings,
    "followup": FollowupSettings,
    "priors": PriorsSettings,
    "scheduler": SchedulerSettings,
    "retention": RetentionSettings,
    "http": HttpSettings,
    "logging": LoggingSettings,
}


def default_config_path() -> Path:
    """The config the CLI uses when ``--config`` is not given."""
    env = os.environ.get("KI67NODE_CONFIG")
    if env:
        return Path(env)
    return Path("config/ki67node.toml")


def load_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Settings:
    """Read, override and validate the configuration.

    ``path`` None means "embedded defaults only". Relative ``data_dir`` is
    resolved against ``base_dir`` (default: the current directory).
    Raises :class:`ConfigError` listing every problem with its key.
    """
    raw: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([("--config", f"file {path} does not exist")]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([("--config", f"{path} is not valid TOML: {exc}")]) from None
    apply_env(raw, os.environ if env is None else env, _SECTIONS, problems)
    settings = _build(raw, problems, base_dir or Path.cwd())
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def _build(raw: dict[str, Any], problems: list[tuple[str, str]], base_dir: Path) -> Settings | None:
    known = set(_SECTIONS) | {"destinations", "sources"}
    for key in raw:
        if key not in known:
            problems.append((key, f"unknown section (known: {', '.join(sorted(known))})"))
    parts = {
        name: parse_section(name, cls, raw.get(name), problems) for name, cls in _SECTIONS.items()
    }
    node: NodeSettings = parts["node"]
    if not node.data_dir.is_absolute():
        parts["node"] = node = dataclasses.replace(node, data_dir=base_dir / node.data_dir)
    destinations = parse_destinations(raw.get("destinations", []), problems)
    sources = parse_sources(raw.get("sources", []), problems)
    settings = Settings(destinations=destinations, sources=sources, **parts)
    _validate(settings, problems)
    return settings


def _check_port(key: str, port: int, problems: list[tuple[str, str]]) -> None:
    if not 0 <= port <= 65535:
        problems.append((key, "must be 0-65535 (0 = pick a free port)"))


def _check_bind(key: str, bind: str, problems: list[tuple[str, str]]) -> None:
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        if bind != "localhost":
            problems.append((key, f"must be an IP address, got {bind!r}"))


def _validate(s: Settings, problems: list[tuple[str, str]]) -> None:
    n = s.node
    if not valid_ae_title(n.ae_title):
        problems.append(
            ("node.ae_title", "must be 1-16 printable ASCII characters, no \\ / * ? quotes")
        )
    for ae in n.allowed_calling_aets:
        if not valid_ae_title(ae):
            problems.append(("node.allowed_calling_aets", f"invalid AE title {ae!r}"))
    _check_bind("node.bind", n.bind, problems)
    _check_port("node.port", n.port, problems)
    if not 1 <= n.max_associations <= 256:
        problems.append(("node.max_associations", "must be 1-256"))
    if not 16_384 <= n.max_pdu_bytes <= 64 * 1024 * 1024:
        problems.append(("node.max_pdu_bytes", "must be between 16384 and 67108864"))
    if n.max_instance_bytes < 1024:
        problems.append(("node.max_instance_bytes", "must be at least 1024"))
    for key in ("acse_timeout_seconds", "network_timeout_seconds"):
        if not 0 < getattr(n, key) <= 3600:
            problems.append((f"node.{key}", "must be > 0 and <= 3600"))
    if n.other_storage not in ("ignore", "refuse"):
        problems.append(("node.other_storage", "must be 'ignore' or 'refuse'"))
    if s.tls.enabled:
        for key in ("cert_file", "key_file", "ca_file"):
            value = getattr(s.tls, key)
            if not value:
                problems.append((f"tls.{key}", "required when tls.enabled = true"))
            elif not Path(value).is_file():
                problems.append((f"tls.{key}", f"file {value} does not exist"))
    if not 0 < s.tls.handshake_timeout_seconds <= 120:
        problems.append(("tls.handshake_timeout_seconds", "must be > 0 and <= 120"))
    url = s.database.url
    if url and not (url.startswith("sqlite:///") or url.startswith("postgresql+psycopg://")):
        problems.append(("database.url", "must start with sqlite:/// or postgresql+psycopg://"))
    if s.ingest.series_stable_seconds < 0:
        problems.append(("ingest.series_stable_seconds", "must be >= 0"))
    if not 0 < s.ingest.sweep_interval_seconds <= 60:
        problems.append(("ingest.sweep_interval_seconds", "must be > 0 and <= 60"))
    if s.filter.max_slice_thickness_mm <= 0:
        problems.append(("filter.max_slice_thickness_mm", "must be > 0"))
    p = s.pipeline
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", p.device):
        problems.append(("pipeline.device", "must be auto, cpu, cuda or cuda:N"))
    if p.model_dir and not Path(p.model_dir).is_dir():
        problems.append(("pipeline.model_dir", f"folder {p.model_dir} does not exist"))
    if not 0 <= p.workers <= 32:
        problems.append(("pipeline.workers", "must be 0-32 (0 = queue only, no local workers)"))
    if not 1 <= p.job_max_attempts <= 20:
        problems.append(("pipeline.job_max_attempts", "must be 1-20"))
    if p.job_retry_backoff_seconds < 0:
        problems.append(("pipeline.job_retry_backoff_seconds", "must be >= 0"))
    if p.job_timeout_seconds <= 0:
        problems.append(("pipeline.job_timeout_seconds", "must be > 0"))
    if p.segmentation not in SEGMENTATION_BACKENDS:
        problems.append(("pipeline.segmentation", "must be 'unet' or 'nnunet'"))
    if p.segmentation == "nnunet" and not p.segmentation_model_dir:
        problems.append(
            (
                "pipeline.segmentation_model_dir",
                "the nnunet backend needs the trained model folder "
                "(<Trainer>__<Plans>__<configuration>)",
            )
        )
    if p.segmentation_model_dir and not Path(p.segmentation_model_dir).is_dir():
        problems.append(
            ("pipeline.segmentation_model_dir", f"folder {p.segmentation_model_dir} does not exist")
        )
    _validate_delivery(s.delivery, problems)
    validate_priors(s.priors, s.sources, problems)
    _validate_ranges(s, problems)
    _check_bind("http.bind", s.http.bind, problems)
    _check_port("http.port", s.http.port, problems)
    if s.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append(("logging.level", "must be DEBUG, INFO, WARNING or ERROR"))


def _validate_delivery(d: DeliverySettings, problems: list[tuple[str, str]]) -> None:
    if not 0 < d.poll_seconds <= 3600:
        problems.append(("delivery.poll_seconds", "must be > 0 and <= 3600"))
    if not 1 <= d.batch_size <= 1000:
        problems.append(("delivery.batch_size", "must be 1-1000"))
    if not 0 < d.retry_initial_seconds <= 86400:
        problems.append(("delivery.retry_initial_seconds", "must be > 0 and <= 86400"))
    if not d.retry_initial_seconds <= d.retry_max_seconds <= 86400:
        problems.append(
            ("delivery.retry_max_seconds", "must be >= retry_initial_seconds and <= 86400")
        )
    if d.give_up_after_hours <= 0:
        problems.append(("delivery.give_up_after_hours", "must be > 0"))
    for key in ("association_timeout_seconds", "dimse_timeout_seconds"):
        if not 0 < getattr(d, key) <= 3600:
            problems.append((f"delivery.{key}", "must be > 0 and <= 3600"))


# (section, key, lowest, highest): numeric keys checked against an inclusive range.
_RANGES = (
    ("followup", "max_diameter_mm", 0.1, 200),
    ("followup", "growth_threshold_percent", 0.1, 1000),
    ("followup", "interval_months_high", 1, 120),
    ("followup", "interval_months_low", 1, 120),
    ("followup", "overdue_grace_days", 0, 3650),
    ("priors", "lookback_years", 1, 100),
    ("priors", "max_studies", 1, 100),
    ("scheduler", "followup_check_minutes", 1, 10080),
    ("scheduler", "retention_check_hours", 1, 720),
    ("retention", "spool_days", 0, 36500),
)


def _validate_ranges(s: Settings, problems: list[tuple[str, str]]) -> None:
    for section, key, low, high in _RANGES:
        if not low <= getattr(getattr(s, section), key) <= high:
            problems.append((f"{section}.{key}", f"must be between {low:g} and {high:g}"))
