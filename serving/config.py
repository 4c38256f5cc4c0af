"""Settings of the query service: defaults < config file (YAML or JSON) < environment < command line.

Every knob an operator turns lives here, never in code: autoscaling of each deployment, batching,
limits on uploads, pixels and ``k``, GPUs per encoder replica, the API key. The file is nested
(see ``serving/config.example.yaml``); unknown keys are refused with their path, so a typo never
silently falls back to a default. Environment variables:

* ``REGIONMIR_API_KEY`` — the bearer token every ``/v1/*`` call must carry (unset: no auth);
  ``REGIONMIR_API_KEY_FILE`` — read it from a file (a mounted secret) instead;
* ``REGIONMIR_SERVE_CONFIG`` — the config file when ``--config`` is not given;
* ``REGIONMIR_SERVE__SECTION__KEY=value`` — any single setting, e.g.
  ``REGIONMIR_SERVE__ENCODER__MAX_REPLICAS=8`` or ``REGIONMIR_SERVE__LIMITS__MAX_K=50`` (values are
  parsed as YAML scalars: numbers, ``true``/``false``, ``null``).

:class:`ServeSettings` is plain data (JSON-ready through :meth:`ServeSettings.to_dict`) so it travels
to every replica unchanged; the API key is never printed (:meth:`ServeSettings.redacted`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

API_KEY_ENV = "REGIONMIR_API_KEY"
API_KEY_FILE_ENV = "REGIONMIR_API_KEY_FILE"
CONFIG_ENV = "REGIONMIR_SERVE_CONFIG"
ENV_PREFIX = "REGIONMIR_SERVE__"


class ConfigError(ValueError):
    """A config file or variable that cannot be used; the message names the file/key and why."""


@dataclass
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"


@dataclass
class AuthSettings:
    #: Bearer token for /v1/*; ``None`` (default) turns auth off. Prefer the environment.
    api_key: str | None = None


@dataclass
class LimitSettings:
    """What one request may cost. Every real film fits: up to 4096 x 4096 px (8 or 16 bit, PNG or
    any supported DICOM syntax) within 32 MB; the film limits are checked on the header, before any
    pixel is decompressed."""

    max_upload_mb: float = 32.0  # 413 above this many MiB of request body
    max_pixels: int = 60_000_000  # 413 for films with more pixels (decompression bombs)
    max_side: int = 8192  # 413 for a longer side than this
    max_aspect_ratio: float = 4.0  # 422 for films longer than 4:1 (no radiograph is)
    max_k: int = 100  # 422 for k outside 1..max_k
    default_k: int = 10
    request_timeout_s: float = 60.0  # per call to an inner deployment, and Serve's HTTP proxy
    films_in_memory: int = 1  # decoded films a replica holds at once (decode → crops)
    film_wait_s: float = 5.0  # how long a request waits for one of those; then 503 + Retry-After
    index_timeout_s: float = 10.0  # deadline of every Milvus RPC the search replica makes

    def decode_limits(self):
        from regionmir.decoded_image import DecodeLimits

        return DecodeLimits(max_pixels=self.max_pixels, max_side=self.max_side, max_aspect=self.max_aspect_ratio)


@dataclass
class DeploymentSettings:
    """Autoscaling and resources of one deployment (Ray Serve ``autoscaling_config``)."""

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = 16
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 60.0
    look_back_period_s: float = 30.0  # ongoing requests are averaged over this window
    num_cpus: float = 0.5

    def serve_scaling(self) -> dict[str, Any]:
        """Ray Serve deployment options for the replica count: ``num_replicas`` when min == max,
        else an ``autoscaling_config``."""
        if self.min_replicas == self.max_replicas:
            return {"num_replicas": self.max_replicas}
        config: dict[str, Any] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
        }
        if self.initial_replicas is not None:
            config["initial_replicas"] = self.initial_replicas
        return {"autoscaling_config": config}


@dataclass
class EncoderSettings(DeploymentSettings):
    max_replicas: int = 2
    max_batch_size: int = 16  # requests (each a stack of crops) merged into one forward pass
    batch_wait_timeout_ms: float = 10.0
    #: GPUs per replica: ``"auto"`` = 1 when the cluster has GPUs, else 0; or a number (0.25 shares one).
    gpus_per_replica: float | str = "auto"
    torch_threads: int = 1
    max_ongoing_requests: int = 32


@dataclass
class SearchSettings(DeploymentSettings):
    max_replicas: int = 2  # forced to 1 for a milvus-lite file (one process per file)
    consistency_level: str = "Bounded"  # a read-only service does not need "Strong"
    search_ef: int = 64


@dataclass
class IngressSettings(DeploymentSettings):
    max_replicas: int = 2
    max_ongoing_requests: int = 32
    #: requests waiting for a replica beyond max_ongoing_requests; past it Serve answers 503
    max_queued_requests: int = 64
    num_cpus: float = 0.5


@dataclass
class AtlasSettings:
    path: str | None = None  # default: MODEL/atlas.json
    candidates: int = 32  # boxes scored per round
    rounds: int = 2  # coarse-to-fine rounds
    prior_weight: float = 0.1


@dataclass
class RaySettings:
    address: str | None = None  # join this cluster (else RAY_ADDRESS, else start a local one)
    num_cpus: int | None = None  # logical CPUs of a local cluster
    object_store_mb: int = 256
    metrics_export_port: int | None = None  # Prometheus scrape port of a local node


@dataclass
class ServeSettings:
    model: str = ""  # model directory (or a training run's output: its best/)
    milvus: str = ""  # .db file (milvus-lite) or http://host:port
    collection: str = "regions"  # collection or alias to search
    app_name: str = "regionmir"
    http: HttpSettings = field(default_factory=HttpSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    ingress: IngressSettings = field(default_factory=IngressSettings)
    atlas: AtlasSettings = field(default_factory=AtlasSettings)
    ray: RaySettings = field(default_factory=RaySettings)

    # -- building

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "config") -> ServeSettings:
        settings = cls()
        _merge(settings, dict(data or {}), source, "")
        return settings

    @classmethod
    def load(
        cls,
        path: str | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        data_source: str = "settings",
    ) -> ServeSettings:
        """Defaults, then the file ``path`` (or ``$REGIONMIR_SERVE_CONFIG``), then ``data`` (the same
        nested settings as a mapping, e.g. Ray Serve application ``args``; errors name ``data_source``),
        then the environment, then ``overrides`` (dotted keys such as ``"http.port"``, from the command line)."""
        env = os.environ if env is None else env
        settings = cls()
        path = path or env.get(CONFIG_ENV) or None
        if path:
            _merge(settings, read_config_file(path), path, "")
        if data:
            _merge(settings, dict(data), data_source, "")
        for name, value in sorted(env.items()):
            if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
                dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
                _set_dotted(settings, dotted, _parse_scalar(value), name)
        key_file = env.get(API_KEY_FILE_ENV)
        if key_file:
            try:
                settings.auth.api_key = Path(key_file).read_text().strip() or None
            except OSError as exc:
                raise ConfigError(f"{API_KEY_FILE_ENV}={key_file}: cannot read ({exc.strerror})") from exc
        if env.get(API_KEY_ENV):
            settings.auth.api_key = env[API_KEY_ENV].strip() or None
        for dotted, value in (overrides or {}).items():
            if value is not None:
                _set_dotted(settings, dotted, value, f"--{dotted}")
        return settings

    def validate(self) -> ServeSettings:
        """Check values that would only fail later, inside a replica; returns ``self``."""
        if not self.model:
            raise ConfigError("model: no model directory given (--model or 'model:' in the config)")
        if not self.milvus:
            raise ConfigError("milvus: no index given (--milvus or 'milvus:' in the config)")
        if not (self.milvus.endswith(".db") or self.milvus.startswith(("http://", "https://"))):
            raise ConfigError(f"milvus: {self.milvus!r} is neither a milvus-lite .db file nor http(s)://host:port")
        if not 0 < self.http.port < 65536:
            raise ConfigError(f"http.port: {self.http.port} is not a TCP port")
        lim = self.limits
        if lim.max_upload_mb <= 0 or lim.max_pixels <= 0 or lim.max_k < 1 or lim.max_side < 1:
            raise ConfigError("limits: max_upload_mb, max_pixels, max_side and max_k must be positive")
        if lim.max_aspect_ratio < 1:
            raise ConfigError(f"limits.max_aspect_ratio={lim.max_aspect_ratio} must be >= 1")
        if lim.films_in_memory < 1 or lim.film_wait_s <= 0 or lim.index_timeout_s <= 0 or lim.request_timeout_s <= 0:
            raise ConfigError("limits: films_in_memory >= 1; film_wait_s, index_timeout_s and request_timeout_s > 0")
        if self.ingress.max_queued_requests < 1:
            raise ConfigError(f"ingress.max_queued_requests={self.ingress.max_queued_requests} must be >= 1")
        if not 1 <= lim.default_k <= lim.max_k:
            raise ConfigError(f"limits.default_k={lim.default_k} must lie in 1..max_k={lim.max_k}")
        for name in ("encoder", "search", "ingress"):
            d: DeploymentSettings = getattr(self, name)
            if d.min_replicas < 0 or d.max_replicas < 1 or d.min_replicas > d.max_replicas:
                raise ConfigError(f"{name}: need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
            if d.target_ongoing_requests <= 0 or d.max_ongoing_requests < 1:
                raise ConfigError(f"{name}: target_ongoing_requests and max_ongoing_requests must be positive")
            if d.look_back_period_s <= 0 or d.upscale_delay_s < 0 or d.downscale_delay_s < 0:
                raise ConfigError(f"{name}: look_back_period_s must be positive, the delays >= 0")
        enc = self.encoder
        if enc.max_batch_size < 1 or enc.batch_wait_timeout_ms < 0:
            raise ConfigError("encoder: max_batch_size >= 1 and batch_wait_timeout_ms >= 0")
        if enc.max_ongoing_requests < enc.max_batch_size:
            # Ray Serve caps a batch at the requests a replica may hold at once.
            raise ConfigError(
                f"encoder.max_ongoing_requests ({enc.max_ongoing_requests}) must be >= "
                f"encoder.max_batch_size ({enc.max_batch_size})"
            )
        if isinstance(enc.gpus_per_replica, str) and enc.gpus_per_replica != "auto":
            raise ConfigError(f"encoder.gpus_per_replica: 'auto' or a number, got {enc.gpus_per_replica!r}")
        if not isinstance(enc.gpus_per_replica, str) and enc.gpus_per_replica < 0:
            raise ConfigError("encoder.gpus_per_replica must be >= 0")
        if self.atlas.candidates < 1 or self.atlas.rounds < 1 or self.atlas.prior_weight < 0:
            raise ConfigError("atlas: candidates >= 1, rounds >= 1, prior_weight >= 0")
        return self

    @property
    def index_is_file(self) -> bool:
        return self.milvus.endswith(".db")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.limits.max_upload_mb * 1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def redacted(self) -> dict[str, Any]:
        """:meth:`to_dict` with the API key replaced by ``"***"`` (for logs and ``--print-config``)."""
        data = self.to_dict()
        if data["auth"]["api_key"]:
            data["auth"]["api_key"] = "***"
        return data


# ------------------------------------------------------------------------------------- helpers


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON config file as a dict (JSON is YAML, so one parser reads both)."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, current: Any, where: str) -> Any:
    """``value`` converted to the type of the default ``current`` (ints, floats, bools, str)."""
    if value is None:
        return None
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(current, str) and not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _field_names(obj: Any) -> dict[str, Any]:
    return {f.name: f for f in fields(obj)}


def _merge(target: Any, data: dict[str, Any], source: str, prefix: str) -> None:
    names = _field_names(target)
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown setting {path!r} (known here: {', '.join(sorted(names))})")
        current = getattr(target, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {path} must be a mapping")
            _merge(current, value, source, path + ".")
        else:
            setattr(target, key, _coerce_field(value, current, f"{source}: {path}", names[key]))


def _coerce_field(value: Any, current: Any, where: str, f: Any) -> Any:
    annotation = str(f.type)
    if "str" in annotation and "float" in annotation:  # gpus_per_replica: "auto" or a number
        if isinstance(value, str):
            return value
        return _coerce(value, 0.0, where)
    if current is None:  # optional settings: keep what was given (None, str or number)
        if value is None:
            return None
        if "int" in annotation:
            return _coerce(value, 0, where)
        return value if not isinstance(value, (int, float)) or "str" not in annotation else str(value)
    return _coerce(value, current, where)


def _set_dotted(settings: ServeSettings, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    _merge(settings, nested, source, "")
