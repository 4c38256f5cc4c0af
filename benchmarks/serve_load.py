"""Query-service load benchmark: what does the HTTP service cost over calling the parts directly,
and does it scale with concurrent clients?

Measured side by side in one run, on one phantom data set and model:

* ``floor_p50_ms``: one box query done in this process with no Ray and no HTTP — decode the PNG,
  crop the box, the encoder's forward pass (one torch thread, as one encoder replica has) and the
  milvus-lite search (a copy of the service's index file) — the least the service could take;
* ``floor_batched_qps``: the same in-process work for 16 queries at a time — 16 decodes and crops,
  one forward pass of the 16 crops, 16 searches — on 2 threads, answers per second: what the
  service could reach at most under 16 clients;
* ``levels``: the service (``serving.deployments``, ``--topology``: ``fused`` — the FastAPI ingress
  holds the encoder, then the search deployment — or ``split`` — ingress → encoder → search;
  ``--proxy``: ``haproxy`` in front, the default, or Serve's Python ``serve`` proxy) with
  the production safeguards on (an API key, the upload and pixel limits, queue caps), driven over
  HTTP by 1, 4 and 16 concurrent clients, each sending box queries back to back for ``--seconds``;
  with the encoder batcher on (``max_batch_size`` 16) and off (``max_batch_size`` 1): ``p50_ms``,
  ``p99_ms``, ``qps`` (answers per second), ``errors`` (any non-200 or failed call);
* ``replicas_over_time``: replicas of the deployment that holds the encoder (``encoder_holder``:
  ``ingress`` when fused) and of the ingress, running and starting, sampled each second from
  ``serve.status()`` from the first level to after the load stops (they autoscale between
  ``--min-replicas`` and ``--max-replicas`` on ongoing requests: they must rise under load and fall
  after); ``replica_start_s``: for each replica the autoscaler added to the encoder holder, seconds
  from first seen STARTING to RUNNING (goal ≤ 20);
* ratios: ``single_client_p50_to_floor`` (goal ≤ 1.3), ``qps_16_to_1`` (goal ≥ 2.5) and
  ``qps_16_to_floor_batched`` (goal ≥ 0.6), for the batching-on levels.

Run: ``.venv/bin/python benchmarks/serve_load.py`` (``--seconds 10`` for a quick run). The model is
a randomly initialised ``resnet10-cpu`` unless ``--model`` names a trained one: latency does not
depend on what the weights learned. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

from keepalive_client import KeepAliveClient, multipart_body  # noqa: E402
from random_model_index import build_random_model_index_subprocess  # noqa: E402

from serving.config import IngressSettings, ServeSettings  # noqa: E402

APP = "regionmir"
API_KEY = "serve-load-benchmark-key"  # the production safeguard: every /v1 call carries it
BATCH = 16  # queries per batch of the batched floor (the encoder's max_batch_size)


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 2) if values else float("nan")


def query_box(film_png: bytes) -> str:
    """A box in the middle-left of the film (a lung field on the phantoms), in its pixels."""
    from regionmir.image_reader import read_image

    h, w = read_image(film_png, source="query").pixels.shape[:2]
    return f"{int(w * 0.15)},{int(h * 0.2)},{int(w * 0.45)},{int(h * 0.7)}"


def floor_latency(demo: dict, film_png: bytes, box: str, queries: int, k: int, workdir: str) -> dict:
    """The same decode → crop → encode → search as a box query, in this process (no Ray, no HTTP)."""
    import torch

    from indexing.region_index import copy_lite_index
    from regionmir.boxes import Box
    from regionmir.image_reader import read_image
    from regionmir.roi_crop import roi_crops
    from serving.runtime import EncoderRuntime, SearchRuntime

    torch.set_num_threads(1)
    db_copy = os.path.join(workdir, "floor-regions.db")
    copy_lite_index(demo["milvus"], db_copy)  # milvus-lite: one process per file; the service gets the original
    encoder = EncoderRuntime(demo["model"], device="cpu", threads=1)
    search = SearchRuntime(db_copy, "regions", encoder.contract.version_id)
    coords = [float(v) for v in box.split(",")]
    times = []
    try:
        for i in range(queries + 5):
            started = time.perf_counter()
            pixels = read_image(film_png, source="query").pixels
            crops = roi_crops(pixels, [Box(*coords)], encoder.contract.crop_config)
            vector = encoder.forward(crops)["embeddings"][0]
            hits = search.search(vector, k)
            elapsed = (time.perf_counter() - started) * 1000.0
            assert len(hits) == k, f"floor search returned {len(hits)} hits, wanted {k}"
            if i >= 5:  # warm-up
                times.append(elapsed)
    finally:
        search.close()
    return {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99), "queries": len(times)}


def run_threads(targets: list) -> float:
    """Run each callable on its own thread, all at once; the seconds until the last one ended."""
    started = time.perf_counter()
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def floor_batched_qps(demo: dict, film_png: bytes, box: str, seconds: float, k: int, workdir: str) -> dict:
    """Answers per second of the in-process work done 16 queries at a time on 2 threads: 16 decodes
    and crops, one forward pass of the 16 crops (one torch thread each), 16 searches."""
    import torch

    from indexing.region_index import copy_lite_index
    from regionmir.boxes import Box
    from regionmir.image_reader import read_image
    from regionmir.roi_crop import roi_crops
    from serving.runtime import EncoderRuntime, SearchRuntime

    torch.set_num_threads(1)
    db_copy = os.path.join(workdir, "floor-batched-regions.db")
    copy_lite_index(demo["milvus"], db_copy)
    encoder = EncoderRuntime(demo["model"], device="cpu", threads=1)
    search = SearchRuntime(db_copy, "regions", encoder.contract.version_id)
    coords = [float(v) for v in box.split(",")]
    answered = [0, 0]
    deadline = time.perf_counter() + seconds

    failures: list[BaseException] = []

    def work(slot: int, batches: int | None = None) -> None:
        torch.set_num_threads(1)
        try:
            batch_loop(slot, batches)
        except BaseException as exc:  # re-raised below: a failed query must not pass as a slow one
            failures.append(exc)

    def batch_loop(slot: int, batches: int | None) -> None:
        while time.perf_counter() < deadline and (batches is None or batches > 0):
            batches = None if batches is None else batches - 1
            crops = np.concatenate(
                [
                    roi_crops(read_image(film_png, source="query").pixels, [Box(*coords)], encoder.contract.crop_config)
                    for _ in range(BATCH)
                ]
            )
            vectors = encoder.forward(crops)["embeddings"]
            for vector in vectors:
                assert len(search.search(vector, k)) == k
            answered[slot] += BATCH

    try:
        work(0, batches=1)  # warm-up: one batch
        answered[0] = 0
        deadline = time.perf_counter() + seconds
        wall = run_threads([lambda slot=slot: work(slot) for slot in range(2)])
        if failures:
            raise failures[0]
    finally:
        search.close()
    return {"qps": round(sum(answered) / wall, 2), "answers": sum(answered), "threads": 2, "batch": BATCH}


def replica_start_seconds(samples: list[dict], holder: str) -> list[float]:
    """Seconds each replica the autoscaler added to ``holder`` spent from first seen STARTING to
    RUNNING, under load and after (first in, first out; one-second samples)."""
    waiting: list[float] = []
    durations: list[float] = []
    previous = None
    for sample in samples:
        if "clients" not in sample["phase"] and sample["phase"] != "idle after load":
            previous = None  # deploys and warm-ups start replicas too: not the autoscaler's
            continue
        starting, running = sample[f"{holder}_starting"], sample[f"{holder}_replicas"]
        if previous is not None:
            waiting += [sample["t_s"]] * max(0, starting + running - previous[0] - previous[1])
            for _ in range(max(0, running - previous[1])):
                if waiting:
                    durations.append(round(sample["t_s"] - waiting.pop(0), 1))
        previous = (starting, running)
    return durations


class ReplicaSampler(threading.Thread):
    """Running encoder and ingress replicas once a second (``serve.status()``), with the level
    running then."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[dict] = []
        self.label = "start-up"
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def running(self) -> dict[str, int]:
        """Per deployment, replicas RUNNING and replicas the autoscaler asked for that are still
        STARTING (a new replica imports torch: tens of seconds on a busy 2-core machine)."""
        from ray import serve

        counts = {}
        try:
            app = serve.status().applications.get(APP)
        except Exception:
            app = None
        for name in ("encoder", "ingress", "search"):
            states = app.deployments[name].replica_states if app and name in app.deployments else {}
            by_state = {str(getattr(state, "value", state)): int(n) for state, n in states.items()}
            counts[f"{name}_replicas"] = by_state.get("RUNNING", 0)
            counts[f"{name}_starting"] = by_state.get("STARTING", 0)
        return counts

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append({"t_s": round(time.perf_counter() - self.t0, 1), **self.running(), "phase": self.label})
            self.stop.wait(1.0)


def serve_processes() -> dict[int, str]:
    """The Serve processes of this machine: pid → role (``proxy``, ``haproxy``, ``haproxy manager``,
    ``controller``, a deployment name)."""
    roles = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::ProxyActor"):
            roles[int(pid)] = "proxy"
        elif os.path.basename(title) == "haproxy":  # the HAProxy ingress (http.proxy: haproxy)
            roles[int(pid)] = "haproxy"
        elif title.startswith("ray::HAProxyManager"):  # runs HAProxy; reads its per-request log lines
            roles[int(pid)] = "haproxy manager"
        elif title.startswith("ray::ServeController"):
            roles[int(pid)] = "controller"
        elif title.startswith("ray::ServeReplica:"):
            roles[int(pid)] = title.split()[0].rsplit(":", 1)[-1]  # ray::ServeReplica:APP:DEPLOYMENT
    return roles


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_answer(run, *args) -> tuple[dict, dict[str, float]]:
    """``run(*args)``'s result, and the CPU milliseconds per answer each kind of Serve process and
    this load generator spent meanwhile (where the service's time goes)."""
    roles = serve_processes()
    before = {pid: cpu_seconds(pid) for pid in roles}
    mine = time.process_time()
    result = run(*args)
    roles.update(serve_processes())  # replicas the autoscaler started meanwhile count from zero
    spent: dict[str, float] = {}
    for pid, role in roles.items():
        spent[role] = spent.get(role, 0.0) + max(0.0, cpu_seconds(pid) - before.get(pid, 0.0))  # 0: it exited
    spent["load generator"] = time.process_time() - mine
    answers = max(1, result["answers"])
    return result, {role: round(seconds * 1000 / answers, 1) for role, seconds in sorted(spent.items())}


def requests_caller(base: str, film_png: bytes, box: str, k: int):
    """A ``requests.Session`` posting the box query: → call() → (status, body)."""
    session = requests.Session()

    def call() -> tuple[int, bytes]:
        response = session.post(
            base + "/v1/search",
            files={"image": ("film.png", film_png, "image/png")},
            data={"box": box, "k": str(k)},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
        )
        return response.status_code, response.content

    return call


def keepalive_caller(base: str, film_png: bytes, box: str, k: int):
    """:class:`keepalive_client.KeepAliveClient` posting the same query, its bytes built once."""
    body, content_type = multipart_body({"image": ("film.png", film_png, "image/png")}, {"box": box, "k": str(k)})
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": content_type}
    return KeepAliveClient(base + "/v1/search", body, headers).call


CLIENTS = {"keepalive": keepalive_caller, "requests": requests_caller}


def drive(base: str, film_png: bytes, box: str, clients: int, seconds: float, k: int, kind: str = "keepalive") -> dict:
    """``clients`` threads, each posting box queries back to back for ``seconds`` with a ``kind``
    client (:data:`CLIENTS`); every answer is checked (HTTP 200, ``k`` results)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        call = CLIENTS[kind](base, film_png, box, k)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                status, body = call()
                ok = status == 200 and len(json.loads(body)["results"]) == k
                reason = "" if ok else f"HTTP {status}: {body[:200]!r}"
            except Exception as exc:  # a refused or timed-out call is an error, not a crash
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            elapsed = (time.perf_counter() - started) * 1000.0
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors.append(reason)

    wall = run_threads([client] * clients)
    if errors:
        print(f"[bench]   first error: {errors[0]}", flush=True)
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "qps": round(len(latencies) / wall, 2),
        "answers": len(latencies),
        "errors": len(errors),
    }


def settings_for(demo: dict, port: int, batching: bool, args: argparse.Namespace) -> ServeSettings:
    def scaling(least: int, most: int) -> dict:
        return {
            "min_replicas": least,
            "max_replicas": most,
            "target_ongoing_requests": args.target_ongoing,
            "upscale_delay_s": 2.0,
            "look_back_period_s": 5.0,
            "downscale_delay_s": args.downscale_delay,
        }

    return ServeSettings.from_dict(
        {
            "model": demo["model"],
            "milvus": demo["milvus"],
            "app_name": APP,
            "topology": args.topology,
            "auth": {"api_key": API_KEY},
            "http": {"host": "127.0.0.1", "port": port, "proxy": args.proxy},
            "encoder": {
                **scaling(args.min_replicas, args.max_replicas),
                "torch_threads": 1,
                "max_batch_size": BATCH if batching else 1,
                "batch_wait_timeout_ms": args.batch_wait_ms if batching else 0.0,
            },
            # fused: the ingress holds the encoder and scales like it; split: it decodes and crops
            "ingress": scaling(args.min_replicas, args.max_replicas)
            if args.topology == "fused"
            else scaling(1, args.max_ingress),
            "ray": {"num_cpus": 8},
        },
        "benchmark settings",
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="work folder (default: a temporary one, removed after)")
    p.add_argument("--model", help="a trained model directory (default: random resnet10-cpu weights)")
    p.add_argument("--images", type=int, default=12, help="phantom films (70%% indexed)")
    p.add_argument("--size", type=int, default=256, help="phantom film side in pixels")
    p.add_argument("--seconds", type=float, default=25.0, help="load per level")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument(
        "--max-replicas",
        type=int,
        default=IngressSettings().max_replicas,
        help="the encoder holder's autoscaling cap (default: the service's own default; more replicas "
        "than cores lose throughput: on 2 cores, 16 clients got 150 answers/s with 3, 208 with 2)",
    )
    p.add_argument("--max-ingress", type=int, default=2, help="split: ingress replicas at most (decoding, crops)")
    p.add_argument("--topology", choices=("fused", "split"), default="fused", help="see serving.deployments")
    p.add_argument("--proxy", choices=("haproxy", "serve"), default="haproxy", help="http.proxy: what answers HTTP")
    p.add_argument(
        "--batching",
        default="on,off",
        help="levels with encoder batching on (max_batch_size 16), off (1), or both (on,off)",
    )
    p.add_argument("--batch-wait-ms", type=float, default=0.0, help="encoder.batch_wait_timeout_ms with batching on")
    p.add_argument("--target-ongoing", type=float, default=2.0)
    p.add_argument("--downscale-delay", type=float, default=10.0)
    p.add_argument("--floor-queries", type=int, default=100)
    p.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="keepalive",
        help="the load generator's HTTP client: keepalive (the request's bytes built once, one persistent "
        "socket; default) or requests (a requests.Session building each request); with keepalive, one "
        "client is also measured with requests, side by side",
    )
    args = p.parse_args()
    clients_levels = [int(c) for c in args.clients.split(",")]

    workdir = args.out or tempfile.mkdtemp(prefix="serve-load-")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[bench] building the phantom index in {workdir}", flush=True)
    demo = build_random_model_index_subprocess(
        os.path.join(workdir, "demo"), images=args.images, size=args.size, seed=5, model=args.model
    )
    with open(demo["query_films"][0], "rb") as film:
        film_png = film.read()
    box = query_box(film_png)
    print(
        f"[bench] {demo['rows']} indexed regions; query film {os.path.basename(demo['query_films'][0])} box {box}",
        flush=True,
    )

    floor = floor_latency(demo, film_png, box, args.floor_queries, args.k, workdir)
    print(
        f"[bench] floor (in-process decode+crop+encode+search): p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms",
        flush=True,
    )
    batched = floor_batched_qps(demo, film_png, box, min(args.seconds, 10.0), args.k, workdir)
    print(f"[bench] batched floor ({BATCH} queries a batch, 2 threads): {batched['qps']} answers/s", flush=True)
    holder = "ingress" if args.topology == "fused" else "encoder"

    import socket

    import ray
    from ray import serve

    from serving.deployments import start_service

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    levels: list[dict] = []
    requests_level: dict | None = None
    sampler = ReplicaSampler()
    try:
        for batching in [mode == "on" for mode in args.batching.split(",")]:
            label = "on" if batching else "off"
            print(f"[bench] deploying the service with batching {label}", flush=True)
            sampler.label = f"deploying batching {label}"  # replicas a deploy starts are not the autoscaler's
            base = start_service(settings_for(demo, port, batching, args), ready_timeout_s=600)
            if not sampler.is_alive():
                sampler.start()
            sampler.label = f"warm-up batching {label}"
            drive(base, film_png, box, 1, 5.0, args.k, args.client)  # warm-up: first calls build handles and caches
            if batching and args.client != "requests":  # the same single client with requests, side by side
                sampler.label = "1 client requests"
                measured, cpu = cpu_per_answer(drive, base, film_png, box, 1, args.seconds, args.k, "requests")
                requests_level = {"clients": 1, "batching": batching, "client": "requests", **measured}
                requests_level["cpu_ms_per_answer"] = cpu
                print(
                    f"[bench]  1 client with requests, batching {label}: p50 {measured['p50_ms']} ms, "
                    f"{measured['qps']} q/s, {measured['errors']} errors; CPU ms per answer {cpu}",
                    flush=True,
                )
            for clients in clients_levels:
                sampler.label = f"{clients} clients batching {label}"
                measured, cpu = cpu_per_answer(drive, base, film_png, box, clients, args.seconds, args.k, args.client)
                level = {
                    "clients": clients,
                    "batching": batching,
                    "client": args.client,
                    **measured,
                    "cpu_ms_per_answer": cpu,
                }
                for name in dict.fromkeys((holder, "ingress")):
                    level[f"{name}_replicas_max"] = max(
                        (
                            s[f"{name}_replicas"] + s[f"{name}_starting"]
                            for s in sampler.samples
                            if s["phase"] == sampler.label
                        ),
                        default=0,
                    )
                levels.append(level)
                print(
                    f"[bench] {clients:>2} clients, batching {label}: p50 {level['p50_ms']} ms, "
                    f"p99 {level['p99_ms']} ms, {level['qps']} q/s, {level['errors']} errors, "
                    f"up to {level[f'{holder}_replicas_max']} {holder} (encoder-holding) / "
                    f"{level['ingress_replicas_max']} ingress replicas (running or starting); CPU ms per answer {cpu}",
                    flush=True,
                )
            if batching:  # watch the encoder scale back down with no load
                sampler.label = "idle after load"
                deadline = time.perf_counter() + args.downscale_delay + 60
                while time.perf_counter() < deadline:
                    last = sampler.samples[-1] if sampler.samples else {}
                    if (
                        last.get("phase") == "idle after load"
                        and last[f"{holder}_starting"] == 0
                        and last["ingress_starting"] == 0
                        and last[f"{holder}_replicas"] == args.min_replicas
                        and last["ingress_replicas"] == (args.min_replicas if holder == "ingress" else 1)
                    ):
                        break
                    time.sleep(1)
                time.sleep(2)
                print(
                    f"[bench] idle: {sampler.samples[-1][f'{holder}_replicas']} {holder} / "
                    f"{sampler.samples[-1]['ingress_replicas']} ingress replica(s) "
                    f"{sampler.samples[-1]['t_s']} s into the run",
                    flush=True,
                )
    finally:
        sampler.stop.set()
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        if not args.out:
            shutil.rmtree(workdir, ignore_errors=True)

    on = {lv["clients"]: lv for lv in levels if lv["batching"]}
    off = {lv["clients"]: lv for lv in levels if not lv["batching"]}
    first, last = min(clients_levels), max(clients_levels)
    samples = sampler.samples

    def placed(s: dict) -> int:  # running + starting: what the autoscaler decided
        return sum(s[f"{name}_replicas"] + s[f"{name}_starting"] for name in dict.fromkeys((holder, "ingress")))

    loaded = [placed(s) for s in samples if "clients" in s["phase"]]
    idle = [placed(s) for s in samples if s["phase"] == "idle after load"]
    start_s = replica_start_seconds(samples, holder)
    result = {
        "topology": args.topology,
        "proxy": args.proxy,
        "encoder_holder": holder,
        "floor_p50_ms": floor["p50_ms"],
        "floor_p99_ms": floor["p99_ms"],
        "floor_batched_qps": batched["qps"],
        "client": args.client,
        "levels": levels,
        "single_client_requests": requests_level,
        "replicas_over_time": samples,
        "replica_start_s": start_s,
        "replica_start_s_max": max(start_s) if start_s else None,
        "single_client_p50_to_floor": round(on[first]["p50_ms"] / floor["p50_ms"], 2) if on else None,
        f"qps_{last}_to_{first}": round(on[last]["qps"] / on[first]["qps"], 2) if on and on[first]["qps"] else None,
        f"qps_{last}_to_floor_batched": round(on[last]["qps"] / batched["qps"], 2) if on else None,
        f"qps_{last}_to_{first}_no_batching": round(off[last]["qps"] / off[first]["qps"], 2)
        if off.get(first) and off[first]["qps"]
        else None,
        "errors": sum(lv["errors"] for lv in levels + ([requests_level] if requests_level else [])),
        "replicas_rose": bool(loaded) and max(loaded) > args.min_replicas,
        "replicas_fell": bool(idle) and idle[-1] < max(loaded or [0]),
        "indexed_regions": demo["rows"],
        "seconds_per_level": args.seconds,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
