"""The daemon's settings: one YAML file validated at start, command-line flags overriding it.

Every key is documented in the README ("Configuration"); `deploy/contourqa.example.yaml` lists them all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contourqa.qa_models.assess_config import AssessConfig
from contourqa.qa_models.errors import InputError

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, at most 16


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value.strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Destination(_Strict):
    """A DICOM peer written ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)

    @classmethod
    def parse(cls, text: str) -> "Destination":
        match = re.fullmatch(r"(.+)@(.+):(\d+)", text.strip())
        if not match:
            raise ValueError(f"{text!r} is not a destination of the form AET@HOST:PORT")
        return cls(ae_title=_check_ae_title(match[1]), host=match[2], port=int(match[3]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class AllowedCaller(_Strict):
    """A calling AE title the SCP accepts, optionally only from these host addresses."""

    ae_title: str
    hosts: list[str] = Field(default_factory=list)

    _ae = field_validator("ae_title")(_check_ae_title)


class TlsSettings(_Strict):
    certificate: Path
    key: Path
    ca: Path | None = Field(None, description="CA bundle; when set, callers must present a certificate it signed")


class ScpSettings(_Strict):
    ae_title: str = "CONTOURQA"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    max_pdu: int = Field(0, ge=0, description="largest PDU accepted, bytes; 0 = unlimited")
    max_associations: int = Field(16, ge=1)
    allowed_callers: list[AllowedCaller] | None = Field(
        None, description="calling AE titles accepted; none = accept any caller")
    tls: TlsSettings | None = None
    min_free_disk_mb: float = Field(500, ge=0, description="refuse instances (0xA700) below this much free disk")
    network_timeout_s: float = Field(60, gt=0)

    _ae = field_validator("ae_title")(_check_ae_title)


class AssemblySettings(_Strict):
    stable_age_s: float = Field(120, gt=0, description="wait this long after the last image of a series "
                                                       "before assessing a case whose references are incomplete")


class WorkerSettings(_Strict):
    concurrency: int = Field(1, ge=1, description="inference processes per worker (one per GPU)")
    soft_time_limit_s: float = Field(300, gt=0)
    time_limit_s: float = Field(360, gt=0)
    heartbeat_s: float = Field(5, gt=0, description="a running case's worker reports alive this often; after "
                                                    "three missed beats the case goes to another worker")
    device: str = Field("auto", description="auto (CUDA when present), cpu or cuda[:N]")
    model_dir: Path | None = Field(None, description="model folder; none = the shipped default model")
    use_model: bool = Field(True, description="false = screens only, no Dice prediction")

    @model_validator(mode="after")
    def _hard_after_soft(self) -> "WorkerSettings":
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError("time_limit_s must be longer than soft_time_limit_s")
        return self


class ExportSettings(_Strict):
    calling_ae_title: str = "CONTOURQA"
    default_destination: Destination | None = None
    destinations: dict[str, Destination] = Field(
        default_factory=dict, description="sending AE title -> where its SRs go")
    max_attempts: int = Field(50, ge=1, description="after this many transient failures an SR is dead-lettered")
    initial_delay_s: float = Field(5, gt=0)
    max_delay_s: float = Field(600, gt=0)
    timeout_s: float = Field(30, gt=0)
    answer_failed: bool = Field(True, description=(
        "a case that cannot be assessed is answered with an SR saying so and why (false: only listed)"))

    _ae = field_validator("calling_ae_title")(_check_ae_title)

    @field_validator("default_destination", mode="before")
    @classmethod
    def _parse_default(cls, value: Any) -> Any:
        return Destination.parse(value) if isinstance(value, str) else value

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_each(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {_check_ae_title(k): Destination.parse(v) if isinstance(v, str) else v for k, v in value.items()}
        return value

    def destination_for(self, calling_ae: str | None) -> Destination | None:
        return self.destinations.get((calling_ae or "").strip(), self.default_destination)

    @property
    def sending_lease_s(self) -> float:
        """A send claimed longer ago than this is taken to have died with its worker."""
        return self.timeout_s * 4

    def delay_after(self, attempts: int) -> float:
        """Exponential backoff, capped: initial, 2x, 4x ... max."""
        return min(self.initial_delay_s * 2 ** max(attempts - 1, 0), self.max_delay_s)


class SchedulerSettings(_Strict):
    sweep_interval_s: float = Field(5, gt=0, description="how often stale cases and due exports are picked up")
    retention_days: float | None = Field(None, gt=0, description="delete stored studies older than this; none = keep")
    daily_summary_at: str = Field("06:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                                  description="UTC time (HH:MM) the previous days' summaries are written")
    retention_cron: str = Field("17 * * * *", description="crontab (UTC) of the retention job")


class ApprovalSettings(_Strict):
    """How the node recognises the approved version of an auto-contour when the planning system sends it
    back: any one of these marks a structure set as approved. Its ROIs are then compared with the latest
    assessed auto-contour of the same image series (real Dice, HD95) instead of being assessed; with no
    auto-contour of that series before it, it is assessed like any other."""

    statuses: list[str] = Field(["APPROVED"], description="RT Structure Set ApprovalStatus values")
    label_pattern: str | None = Field(None, description="regular expression searched in StructureSetLabel, "
                                                        "ContentLabel or SeriesDescription")
    calling_aes: list[str] = Field(default_factory=list, description="senders whose structure sets are approved ones")
    roi_names: dict[str, str] = Field(default_factory=dict,
                                      description="approved ROI name -> the auto-contour's, where they differ")

    @field_validator("label_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"not a regular expression ({error})") from None
        return pattern


class NotifySettings(_Strict):
    """How audits tell an admin about drift: e-mail through this SMTP server (an audit's --email names the
    recipient) and/or a webhook (an audit's --webhook URL receives a JSON POST)."""

    smtp_host: str | None = Field(None, description="none = no e-mail")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = None
    sender: str = Field("contourqa@localhost", description="From: of the notices")
    timeout_s: float = Field(10, gt=0, description="a notice that takes longer is given up (and logged)")


class WebSettings(_Strict):
    bind: str = Field("127.0.0.1", description="address of the read-only web page; loopback by default")
    port: int | None = Field(None, ge=0, le=65535, description="none = no web page; 0 = any free port")
    user: str | None = Field(None, description="basic auth when user and password are both set")
    password: str | None = None
    tls_cert: Path | None = Field(None, description="PEM certificate (with tls_key): HTTPS")
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _pairs(self) -> "WebSettings":
        if bool(self.user) != bool(self.password):
            raise ValueError("web.user and web.password go together")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("web.tls_cert and web.tls_key go together")
        return self


class Settings(_Strict):
    home: Path = Field(Path("contourqa-home"), description="store, database, reports and embedded Redis live here")
    database_url: str | None = Field(None, description="SQLAlchemy URL; none = SQLite in home")
    database_wait_s: float = Field(300, ge=0, description="a starting scp, worker or scheduler waits this long "
                                                          "for a database server that is not up yet")
    broker_url: str | None = Field(None, description="redis://...; none = embedded Redis (serve only)")
    log_json: bool = False
    log_level: str = "INFO"
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus endpoint; none = off")
    scp: ScpSettings = Field(default_factory=ScpSettings)
    assembly: AssemblySettings = Field(default_factory=AssemblySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)
    assess: AssessConfig = Field(default_factory=AssessConfig)

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'contourqa.sqlite').resolve()}"


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read the YAML file (if any), apply dotted-key overrides from the command line, validate once."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise InputError(f"{path}: cannot read the configuration ({error.strerror or error})") from None
        except yaml.YAMLError as error:
            raise InputError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: the configuration must be a mapping of keys to values")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "configuration"
        extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise InputError(f"{path or 'configuration'}: {where}: {first['msg']}{extra}") from None
