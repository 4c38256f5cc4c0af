"""Settings of the query service: defaults < config file (YAML or JSON) < environment < command line.

Every knob an operator turns lives here, never in code: autoscaling of each deployment, batching,
limits on uploads, pixels and ``k``, GPUs per encoder replica, the API key, the hospital's PACS. Each default is written
once, on its field below. The file is nested (see ``serving/config.example.yaml``); unknown keys are
refused with their path, so a typo never silently falls back to a default. Environment variables:

* ``REGIONMIR_API_KEY`` — the bearer token every ``/v1/*`` call must carry (unset: no auth);
  ``REGIONMIR_API_KEY_FILE`` — read it from a file (a mounted secret) instead;
* ``REGIONMIR_SERVE_CONFIG`` — the config file when ``--config`` is not given;
* ``REGIONMIR_SERVE__SECTION__KEY=value`` — any single setting, e.g.
  ``REGIONMIR_SERVE__ENCODER__MAX_REPLICAS=8`` or ``REGIONMIR_SERVE__LIMITS__MAX_K=50`` (values are
  parsed as YAML scalars: numbers, ``true``/``false``, ``null``; a text setting keeps the value as
  written, so a key such as ``0123`` stays ``"0123"``).

:class:`ServeSettings` is a pydantic-settings model whose sections are pydantic models; values are
typed (an integer setting takes ``8`` or ``8.0``, never ``"8"`` or ``true``; a number where text is
meant, such as an all-digit API key, is that text). Every source is checked on its own before the
sources are merged, so a mistake is reported with the file, the variable or the flag it came from.
The settings are plain data (JSON-ready through :meth:`ServeSettings.to_dict`, rebuilt by
:meth:`ServeSettings.from_dict`) so they travel to every replica unchanged; the API key is never
printed (:meth:`ServeSettings.redacted`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

API_KEY_ENV = "REGIONMIR_API_KEY"
API_KEY_FILE_ENV = "REGIONMIR_API_KEY_FILE"
CONFIG_ENV = "REGIONMIR_SERVE_CONFIG"
ENV_PREFIX = "REGIONMIR_SERVE__"


class ConfigError(ValueError):
    """A config file or variable that cannot be used; the message names the file/key and why."""


# ------------------------------------------------------------------------------------- value types


def _whole(value: Any) -> Any:
    """YAML reads ``8.0`` as a float: as an integer setting it is 8 (``8.5`` stays refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _text(value: Any) -> Any:
    """A number where text is meant (an all-digit API key, a collection named 2024) is that text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


#: An integer setting: ``8`` or ``8.0``; never a string or a boolean.
Integer = Annotated[int, Strict(), BeforeValidator(_whole)]
#: A number setting: an integer or a float; never a string or a boolean.
Number = Annotated[float, Strict()]
#: A text setting: a string (numbers are taken as their text); never a boolean or a mapping.
Text = Annotated[str, Strict(), BeforeValidator(_text)]


class _Section(BaseModel):
    """One nested section of the settings: typed, unknown keys refused, checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ------------------------------------------------------------------------------------- sections


class HttpSettings(_Section):
    host: Text = "127.0.0.1"
    port: Integer = 8000
    route_prefix: Text = "/"
    #: What answers ``host:port`` on a Ray this service starts itself. ``haproxy``: HAProxy (C) in
    #: front, the ingress replicas answer HTTP themselves and call the search deployment over gRPC
    #: (Ray Serve's ``RAY_SERVE_ENABLE_HA_PROXY`` + ``RAY_SERVE_THROUGHPUT_OPTIMIZED``); ``serve``:
    #: Serve's Python HTTP proxy actor and actor calls. On a cluster it joins, the nodes' environment
    #: decides (set those two variables there).
    proxy: Literal["haproxy", "serve"] = "haproxy"


class AuthSettings(_Section):
    #: Bearer token for /v1/*; ``None`` (default) turns auth off. Prefer the environment.
    api_key: Text | None = None


class LimitSettings(_Section):
    """What one request may cost. Every real film fits: up to 4096 x 4096 px (8 or 16 bit, PNG or
    any supported DICOM syntax) within 32 MB; the film limits are checked on the header, before any
    pixel is decompressed."""

    max_upload_mb: Number = 32.0  # 413 above this many MiB of request body
    max_pixels: Integer = 60_000_000  # 413 for films with more pixels (decompression bombs)
    max_side: Integer = 8192  # 413 for a longer side than this
    max_aspect_ratio: Number = 4.0  # 422 for films longer than 4:1 (no radiograph is)
    max_k: Integer = 100  # 422 for k outside 1..max_k
    default_k: Integer = 10
    request_timeout_s: Number = 60.0  # per call to an inner deployment, and per HTTP request (408)
    films_in_memory: Integer = 1  # decoded films a replica holds at once (decode → crops)
    film_wait_s: Number = 5.0  # how long a request waits for one of those; then 503 + Retry-After
    index_timeout_s: Number = 10.0  # deadline of every Milvus RPC the search replica makes

    def decode_limits(self):
        from regionmir.decoded_image import DecodeLimits

        return DecodeLimits(max_pixels=self.max_pixels, max_side=self.max_side, max_aspect=self.max_aspect_ratio)


class DeploymentSettings(_Section):
    """Autoscaling and resources of one deployment (Ray Serve ``autoscaling_config``)."""

    min_replicas: Integer = 1
    max_replicas: Integer = 1
    initial_replicas: Integer | None = None
    target_ongoing_requests: Number = 2.0
    max_ongoing_requests: Integer = 16
    upscale_delay_s: Number = 3.0
    downscale_delay_s: Number = 60.0
    look_back_period_s: Number = 30.0  # ongoing requests are averaged over this window
    num_cpus: Number = 0.5

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


class EncoderSettings(DeploymentSettings):
    max_replicas: Integer = 2
    max_batch_size: Integer = 16  # requests (each a stack of crops) merged into one forward pass
    #: how long a batch waits for more requests after its first; 0: it takes what queued while the
    #: previous batch ran (no added latency at low load, full batches under load)
    batch_wait_timeout_ms: Number = 0.0
    #: GPUs per replica: ``"auto"`` = 1 when the cluster has GPUs, else 0; or a number (0.25 shares one).
    gpus_per_replica: Number | Literal["auto"] = "auto"
    torch_threads: Integer = 1
    max_ongoing_requests: Integer = 32


class SearchSettings(DeploymentSettings):
    max_replicas: Integer = 2  # forced to 1 for a milvus-lite file (one process per file)
    consistency_level: Text = "Bounded"  # a read-only service does not need "Strong"
    search_ef: Integer = 64
    #: ``topology: fused``: the ingress replicas search themselves — a milvus-lite file from their
    #: own copy of the rows the search replica holds, a Milvus server over their own connection —
    #: one process hop fewer per query. ``false``: every search goes to the search replica.
    from_ingress: bool = True
    #: the largest milvus-lite collection an ingress replica copies (about 0.7 KB of memory per row,
    #: per ingress replica); a larger one is searched by the search replica. 0: no copies
    ingress_copy_max_rows: Integer = 100_000


class IngressSettings(DeploymentSettings):
    max_replicas: Integer = 2
    max_ongoing_requests: Integer = 32
    #: requests waiting for a replica beyond max_ongoing_requests; past it Serve answers 503
    max_queued_requests: Integer = 64
    num_cpus: Number = 0.5


class AtlasSettings(_Section):
    path: Text | None = None  # default: MODEL/atlas.json
    candidates: Integer = 32  # boxes scored per round
    rounds: Integer = 2  # coarse-to-fine rounds
    prior_weight: Number = 0.1


class PacsSettings(_Section):
    """The hospital's PACS (DICOMweb): where a query by reference fetches its film and a search's
    Structured Report is stored, and the viewer that opens a hit. Credentials come from the
    environment (``REGIONMIR_DICOMWEB_TOKEN`` or ``REGIONMIR_DICOMWEB_USER`` / ``_PASSWORD``),
    never from here."""

    #: DICOMweb service root, e.g. ``http://pacs:8042/dicom-web``; ``None`` (default): queries by
    #: reference and ``export=sr`` are refused (422 ``no_pacs``); hits still carry their UIDs.
    dicomweb_url: Text | None = None
    #: A viewer's URL for a hit, with ``{study_uid}`` and optionally ``{series_uid}`` and
    #: ``{sop_instance_uid}``, e.g. ``http://viewer/viewer?StudyInstanceUIDs={study_uid}``;
    #: ``None`` (default): hits carry no ``viewer_url``.
    viewer_url: Text | None = None

    def viewer_link(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str | None:
        """:attr:`viewer_url` filled in for one instance (``None`` without a template)."""
        if not self.viewer_url:
            return None
        return self.viewer_url.format(study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_instance_uid)


#: The fields a ``pacs.viewer_url`` template may name.
VIEWER_FIELDS = ("study_uid", "series_uid", "sop_instance_uid")


class RaySettings(_Section):
    address: Text | None = None  # join this cluster (else RAY_ADDRESS, else start a local one)
    num_cpus: Integer | None = None  # logical CPUs of a local cluster
    object_store_mb: Integer = 256
    metrics_export_port: Integer | None = None  # Prometheus scrape port of a local node


# ------------------------------------------------------------------------------------- the settings

#: One source of settings: its name in error messages (a file, a variable, a flag) and its nested values.
Layer = tuple[str, dict[str, Any]]


class ServeSettings(BaseSettings):
    """All settings of the service. ``ServeSettings()`` is the defaults, ``ServeSettings(**values)``
    those values over them; neither reads the process environment — :meth:`load` layers the file,
    the environment and the command line."""

    model_config = SettingsConfigDict(extra="forbid", validate_assignment=True)

    model: Text = ""  # model directory (or a training run's output: its best/)
    milvus: Text = ""  # .db file (milvus-lite) or http://host:port
    collection: Text = "regions"  # collection or alias to search (the alias `regionmir index` moves)
    app_name: Text = "regionmir"
    #: ``fused``: the ingress replicas hold the encoder (one hop fewer; ``ingress.*`` scales them);
    #: ``split``: a separate ``encoder`` deployment scaled by ``encoder.*`` (GPU encoders behind
    #: CPU front doors). See :mod:`serving.deployments`.
    topology: Literal["fused", "split"] = "fused"
    http: HttpSettings = Field(default_factory=HttpSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    atlas: AtlasSettings = Field(default_factory=AtlasSettings)
    pacs: PacsSettings = Field(default_factory=PacsSettings)
    ray: RaySettings = Field(default_factory=RaySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the values passed in: the environment has its own names and YAML-scalar values here
        # (see environment_layers), and a replica rebuilding its settings must read nothing else.
        return (init_settings,)

    # -- building

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "config") -> ServeSettings:
        """The defaults overlaid with ``data`` (nested, as :meth:`to_dict` writes it); errors name ``source``."""
        return cls.from_layers([(source, dict(data or {}))])

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
        layers: list[Layer] = []
        path = path or env.get(CONFIG_ENV) or None
        if path:
            layers.append((path, read_config_file(path)))
        if data:
            layers.append((data_source, dict(data)))
        layers += environment_layers(env)
        layers += [
            (f"--{dotted}", _nest(dotted, value)) for dotted, value in (overrides or {}).items() if value is not None
        ]
        return cls.from_layers(layers)

    @classmethod
    def from_layers(cls, layers: list[Layer]) -> ServeSettings:
        """The defaults overlaid with each layer in turn (later ones win, key by key). Each layer is
        checked on its own first, so an unknown key or a wrong type is reported with the layer's name."""
        merged: dict[str, Any] = {}
        for source, values in layers:
            try:
                cls.model_validate(values)
            except ValidationError as exc:
                raise ConfigError(_describe(exc, source, cls)) from None
            _deep_merge(merged, values)
        return cls.model_validate(merged)

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
        holder = "ingress" if self.topology == "fused" else "encoder"  # the deployment that batches
        if getattr(self, holder).max_ongoing_requests < enc.max_batch_size:
            # Ray Serve caps a batch at the requests a replica may hold at once.
            raise ConfigError(
                f"{holder}.max_ongoing_requests ({getattr(self, holder).max_ongoing_requests}) must be >= "
                f"encoder.max_batch_size ({enc.max_batch_size})"
            )
        if self.search.ingress_copy_max_rows < 0:
            raise ConfigError(f"search.ingress_copy_max_rows={self.search.ingress_copy_max_rows} must be >= 0 (0: off)")
        if enc.gpus_per_replica != "auto" and enc.gpus_per_replica < 0:
            raise ConfigError("encoder.gpus_per_replica must be >= 0")
        if self.atlas.candidates < 1 or self.atlas.rounds < 1 or self.atlas.prior_weight < 0:
            raise ConfigError("atlas: candidates >= 1, rounds >= 1, prior_weight >= 0")
        _check_pacs(self.pacs)
        return self

    @property
    def index_is_file(self) -> bool:
        return self.milvus.endswith(".db")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.limits.max_upload_mb * 1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        """Every setting as nested JSON-ready data; :meth:`from_dict` turns it back into these settings."""
        return self.model_dump(mode="json")

    def redacted(self) -> dict[str, Any]:
        """:meth:`to_dict` with the API key replaced by ``"***"`` (for logs and ``--print-config``)."""
        data = self.to_dict()
        if data["auth"]["api_key"]:
            data["auth"]["api_key"] = "***"
        return data


def _check_pacs(pacs: PacsSettings) -> None:
    """``pacs.dicomweb_url`` is an http(s) URL; ``pacs.viewer_url`` one whose template names
    ``{study_uid}`` and no field but :data:`VIEWER_FIELDS`."""
    import string

    if pacs.dicomweb_url is not None and not pacs.dicomweb_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"pacs.dicomweb_url: {pacs.dicomweb_url!r} is not a DICOMweb service root (http(s)://host:port/path)"
        )
    if pacs.viewer_url is None:
        return
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(pacs.viewer_url) if name is not None}
    except ValueError as exc:
        raise ConfigError(
            f"pacs.viewer_url: not a template ({exc}); write {{study_uid}}, …, and {{{{ for a brace"
        ) from None
    unknown = sorted(fields - set(VIEWER_FIELDS))
    if unknown or "study_uid" not in fields:
        raise ConfigError(
            f"pacs.viewer_url: a template with {{study_uid}} (and optionally {{series_uid}}, {{sop_instance_uid}}), "
            f"got {pacs.viewer_url!r}" + (f" (unknown field(s) {', '.join(unknown)})" if unknown else "")
        )


# ------------------------------------------------------------------------------------- sources


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


def environment_layers(env: Mapping[str, str]) -> list[Layer]:
    """The settings the environment gives, one layer per variable (named by it), in the order they
    apply: ``REGIONMIR_SERVE__SECTION__KEY`` (sorted by name; values parsed as YAML scalars, text
    settings as written), then the API key from ``REGIONMIR_API_KEY_FILE``, then from
    ``REGIONMIR_API_KEY`` (taken as written, stripped)."""
    layers: list[Layer] = []
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            parsed = _parse_scalar(value)
            if parsed is not None and not isinstance(parsed, str) and _takes_text(ServeSettings, dotted.split(".")):
                parsed = value  # a key or a name that YAML would read as a number (0123, 1_000) or a date
            layers.append((name, _nest(dotted, parsed)))
    key_file = env.get(API_KEY_FILE_ENV)
    if key_file:
        try:
            key = Path(key_file).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"{API_KEY_FILE_ENV}={key_file}: cannot read ({exc.strerror})") from exc
        layers.append((API_KEY_FILE_ENV, {"auth": {"api_key": key}}))
    if env.get(API_KEY_ENV):
        layers.append((API_KEY_ENV, {"auth": {"api_key": env[API_KEY_ENV].strip() or None}}))
    return layers


# ------------------------------------------------------------------------------------- helpers


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _takes_text(model: type[BaseModel], path: list[str]) -> bool:
    """Whether the setting at ``path`` is text (its variable's value then stays as written)."""
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) > 1:
        annotation = field.annotation
        return isinstance(annotation, type) and issubclass(annotation, BaseModel) and _takes_text(annotation, path[1:])

    def text(annotation: Any) -> bool:
        return annotation is str or any(text(arg) for arg in get_args(annotation))

    return text(field.annotation)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    """``"http.port", 9000`` → ``{"http": {"port": 9000}}``."""
    nested: dict[str, Any] = {}
    inner = nested
    *sections, key = dotted.split(".")
    for part in sections:
        inner[part] = inner = {}
    inner[key] = value
    return nested


def _deep_merge(target: dict[str, Any], values: Mapping[str, Any]) -> None:
    """``values`` into ``target``, section by section (a later layer replaces single keys, not sections)."""
    for key, value in values.items():
        if isinstance(value, Mapping):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _deep_merge(target[key], value)
        else:
            target[key] = value


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


#: Settings whose value an error message never shows.
_SECRETS = frozenset({"auth.api_key"})


def _describe(exc: ValidationError, source: str, settings_cls: type[BaseModel]) -> str:
    """The errors of one layer, each naming the source and the key: ``SOURCE: unknown setting 'a.b'
    (known here: ...)``, ``SOURCE: a.b must be a mapping``, ``SOURCE: a.b: expected an integer, got 'x'``."""
    problems: dict[str, str] = {}
    alternatives: dict[str, list[str]] = {}
    for error in exc.errors():
        model: type[BaseModel] | None = settings_cls
        parts: list[str] = []
        known: list[str] = []
        for part in error["loc"]:  # field names, then (for a union) the member that failed
            if model is None or not isinstance(part, str) or part not in model.model_fields:
                if error["type"] == "extra_forbidden" and model is not None:
                    parts.append(str(part))
                    known = sorted(model.model_fields)
                break
            parts.append(part)
            annotation = model.model_fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        path = ".".join(parts)
        kind = error["type"]
        if kind == "extra_forbidden":
            problems[path] = f"unknown setting {path!r} (known here: {', '.join(known)})"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            problems[path] = f"{path} must be a mapping"
        else:
            expected = _EXPECTED.get(kind) or (error.get("ctx") or {}).get("expected") or error["msg"]
            alternatives.setdefault(path, []).append(str(expected))
            shown = "a value not shown" if path in _SECRETS else repr(error["input"])
            problems[path] = f"{path}: expected {' or '.join(alternatives[path])}, got {shown}"
    return "; ".join(f"{source}: {problem}" for problem in problems.values())
