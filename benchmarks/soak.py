"""Soak of the query service: clients sending mixed good and hostile queries for minutes; no 5xx, replica RSS flat.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 4] [--sample-every-s 10] [--out DIR]

Builds the demo index, starts the service on 127.0.0.1 with the shipped limits and an API key
(its own local Ray, as ``benchmarks/hostile_requests.py`` does), then runs ``--clients`` threads
for ``--minutes``. Each client draws every request from a fixed-seed mix: about 60 % good queries
(a box on a demo film PNG, an anatomy-only query, a 16-bit 4096 x 4096 PNG, a 512 x 512 phantom
DICOM film) and 40 % bad ones (the uploads of ``tests/hostile_inputs.py``: a deflate bomb of
``--bomb-gib``, a NaN rescale DICOM, a forged JPEG 2000, a 39000 x 1500 strip; a Unicode-digit
and an unknown anatomy, a result key with a trailing newline, bytes that are no image, a 10:1 film,
no API key). After a good answer a client sometimes fetches a result's crop or film
(``/v1/results/{key}/crop|image``). Every answer is recorded (status, the ``error.reason`` of its
JSON body, seconds); every 5xx — ``503 overloaded`` included — is listed with its reason and time.
The goal is zero.

Every ``--sample-every-s`` seconds the RSS of each Serve replica (ingress, encoder, search), the
HTTP proxy and the Serve controller of this script's Ray is sampled (``DIR/rss.csv``, plotted in
``DIR/rss.png``, drawn with PIL; every answer is in ``DIR/requests.csv``).

The last line printed is one JSON object: duration, request counts per kind and status, the 5xx
list, p50/p99 of the good searches answered 200 in the first and the last minute (and last/first),
and per process the RSS of the first sample after warm-up (``--warmup-s``, 60 s), the last, the
max, and the least-squares slope in MiB per minute over the samples after warm-up.

``flat`` (per process): the growth the fitted line gives over the samples after warm-up — slope
times the time from the first to the last of them — is under 5 % of the first of them. The run's
``flat`` is true when every process is flat and the set of processes after warm-up never changed
(a replica that died and came back is not flat, whatever its memory). Growth before the end of
warm-up (imports, first films, caches filling) does not count. A sample taken while the ingress
decodes the 4096 x 4096 film reads up to ~70 MiB high for that instant: single points are noise,
the fitted line over a 10-minute run is the measure.

Not part of ``make test``: a 10-minute run on a quiet machine (``uptime``) is the measurement.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hostile_inputs import (  # noqa: E402
    deflate_bomb_dicom,
    forged_jpeg2000_dicom,
    grey16_png,
    nan_rescale_dicom,
    strip_png,
)
from random_model_index import build_random_model_index_subprocess  # noqa: E402

from serving.config import ServeSettings  # noqa: E402

FLAT_GROWTH = 0.05
#: kind → (weight in the mix, expected status, expected reason); good kinds first.
MIX: dict[str, tuple[int, int, str]] = {
    "good_box_png": (24, 200, ""),
    "good_anatomy": (16, 200, ""),
    "good_png16_4096": (8, 200, ""),
    "good_dicom": (12, 200, ""),
    "bad_deflate_bomb": (4, 413, "image_too_large"),
    "bad_nan_rescale": (4, 422, "bad_pixel_values"),
    "bad_forged_j2k": (4, 413, "image_too_large"),
    "bad_strip_png": (4, 413, "image_too_large"),
    "bad_unicode_digit_anatomy": (4, 422, "unknown_anatomy"),
    "bad_key_trailing_newline": (4, 422, "bad_key"),
    "bad_unknown_anatomy": (4, 422, "unknown_anatomy"),
    "bad_not_an_image": (4, 415, "unsupported_media_type"),
    "bad_aspect": (4, 422, "bad_image_shape"),
    "bad_no_api_key": (4, 401, "unauthorized"),
}
#: follow-ups of a good search answered 200 (not drawn from the mix): kind → (probability, status)
FOLLOW_UPS: dict[str, tuple[float, int]] = {"result_crop": (0.25, 200), "result_image": (0.10, 200)}
GOOD_SEARCHES = tuple(k for k in MIX if k.startswith("good_"))
ANATOMIES = ("cardiac silhouette", "right lung", "left lung", "trachea", "right hemidiaphragm")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _box(width: int, height: int) -> str:
    """A box in the middle-left of a film (a lung field on the phantoms), in its pixels."""
    return f"{int(width * 0.15)},{int(height * 0.2)},{int(width * 0.45)},{int(height * 0.7)}"


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 4) if values else None


# ------------------------------------------------------------------------------------ processes


def _role(cmdline: str) -> str | None:
    """``ingress`` / ``encoder`` / ``search`` (Serve replicas), ``proxy``, ``controller``, else None."""
    if "ServeReplica" in cmdline:  # "ray::ServeReplica:<app>:<deployment>[.<method it runs now>]"
        return cmdline.split("ServeReplica", 1)[1].strip(":").split()[0].split(":")[-1].split(".")[0] or "replica"
    if "ProxyActor" in cmdline:
        return "proxy"
    if "ServeController" in cmdline:
        return "controller"
    return None


def serve_processes() -> list[tuple[str, psutil.Process]]:
    """The Serve replicas, proxy and controller of the Ray this script started (its descendants,
    so another Ray on the machine is not measured), each with its role."""
    found = []
    try:
        candidates = psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        candidates = []
    for process in candidates:
        try:
            role = _role(" ".join(process.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if role:
            found.append((role, process))
    return found


class RssSampler:
    """Every ``every_s`` seconds: (seconds since ``t0``, pid, role, RSS MiB) of every Serve process."""

    def __init__(self, t0: float, every_s: float):
        self.t0, self.every_s = t0, every_s
        self.samples: list[tuple[float, int, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        t = round(time.monotonic() - self.t0, 2)
        for role, process in serve_processes():
            try:
                rss = process.memory_info().rss / 2**20
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.samples.append((t, process.pid, role, round(rss, 1)))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()
            latest = max(s[0] for s in self.samples) if self.samples else 0
            now = ", ".join(f"{role}:{pid} {rss:.0f}" for t, pid, role, rss in self.samples if t == latest)
            print(f"soak: t={latest:.0f} s RSS MiB {now}", file=sys.stderr, flush=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()


def rss_summary(samples: list[tuple[float, int, str, float]], warmup_s: float) -> tuple[dict, bool, list[str]]:
    """Per process (``role:pid``): first sample after warm-up, last, max, slope MiB/min, flat."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, pid, role, rss in samples:
        series[f"{role}:{pid}"].append((t, rss))
    times = sorted({s[0] for s in samples})
    after = [t for t in times if t >= warmup_s]
    first_t, last_t = (after[0], after[-1]) if after else (None, None)
    out, changed = {}, []
    for name, points in sorted(series.items()):
        post = [(t, r) for t, r in points if t >= warmup_s]
        row: dict = {
            "role": name.split(":")[0],
            "pid": int(name.split(":")[1]),
            "at_start_mib": points[0][1],
            "max_mib": max(r for _, r in points),
            "samples_after_warmup": len(post),
        }
        present_throughout = bool(post) and post[0][0] == first_t and post[-1][0] == last_t
        if not present_throughout:
            changed.append(name)
        if len(post) >= 2:
            ts, rs = np.array([p[0] for p in post]), np.array([p[1] for p in post])
            slope_per_s = float(np.polyfit(ts, rs, 1)[0])
            growth = slope_per_s * (ts[-1] - ts[0]) / rs[0] if rs[0] else 0.0
            row.update(
                first_after_warmup_mib=float(rs[0]),
                last_mib=float(rs[-1]),
                max_after_warmup_mib=float(rs.max()),
                slope_mib_per_min=round(slope_per_s * 60, 3),
                fitted_growth_pct=round(100 * growth, 2),
                flat=bool(growth < FLAT_GROWTH),
            )
        else:
            row.update(
                first_after_warmup_mib=post[0][1] if post else None,
                last_mib=points[-1][1],
                slope_mib_per_min=None,
                fitted_growth_pct=None,
                flat=None,
            )
        out[name] = row
    flat = bool(out) and not changed and all(r["flat"] for r in out.values())
    return out, flat, changed


def write_rss_csv(path: Path, samples: list[tuple[float, int, str, float]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "pid", "role", "rss_mib"])
        writer.writerows(samples)


COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def _nice_step(span: float, most: int, steps: tuple[float, ...]) -> float:
    return next((s for s in steps if span / s <= most), steps[-1])


def _panel(
    draw,
    font,
    box: tuple[int, int, int, int],
    series: dict[str, list[tuple[float, float]]],
    t_max: float,
    y_lo: float,
    y_hi: float,
    y_steps: tuple[float, ...],
    y_label: str,
    warmup_s: float,
    band: tuple[float, float] | None = None,
) -> None:
    """One plot: ``series`` (name → [(seconds, value)]) in ``box`` (left, top, right, bottom)."""
    left, top, right, bottom = box

    def xy(t: float, v: float) -> tuple[float, float]:
        v = min(max(v, y_lo), y_hi)
        return left + (right - left) * t / t_max, bottom - (bottom - top) * (v - y_lo) / (y_hi - y_lo)

    if band:
        draw.rectangle([xy(warmup_s, band[1]), xy(t_max, band[0])], fill=(232, 245, 232))
    y_step = _nice_step(y_hi - y_lo, 8, y_steps)
    v = y_lo - y_lo % y_step
    while v <= y_hi:
        if v >= y_lo:
            draw.line([xy(0, v), xy(t_max, v)], fill=(225, 225, 225))
            draw.text((left - 45, xy(0, v)[1] - 6), f"{v:g}", fill="black", font=font)
        v += y_step
    x_step = _nice_step(t_max, 10, (15, 30, 60, 120, 300, 600, 1200, 3600, 7200))
    t = 0.0
    while t <= t_max:
        draw.line([xy(t, y_lo), xy(t, y_hi)], fill=(235, 235, 235))
        draw.text((xy(t, y_lo)[0] - 8, bottom + 5), f"{t / 60:.2f}".rstrip("0").rstrip("."), fill="black", font=font)
        t += x_step
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.line([xy(warmup_s, y_lo), xy(warmup_s, y_hi)], fill=(150, 150, 150))
    draw.text((xy(warmup_s, y_hi)[0] + 3, top + 3), "end of warm-up", fill=(120, 120, 120), font=font)
    draw.text((left, top - 16), y_label, fill="black", font=font)
    for i, (_name, points) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        pts = [xy(t, v) for t, v in points]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for x, y in pts:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)


def plot_rss(path: Path, samples: list[tuple[float, int, str, float]], warmup_s: float, title: str) -> None:
    """RSS over time per process (drawn with PIL: matplotlib is not in the project's environment).
    Top: MiB from 0. Bottom: percent of each process's first sample after warm-up, with the
    +-5 % band of ``flat`` shaded."""
    from PIL import Image, ImageDraw, ImageFont

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, pid, role, rss in samples:
        series[f"{role}:{pid}"].append((t, rss))
    relative: dict[str, list[tuple[float, float]]] = {}
    for name, points in series.items():
        base = next((v for t, v in points if t >= warmup_s), None)
        if base:
            relative[name] = [(t, 100.0 * (v / base - 1.0)) for t, v in points]
    width, height, left, right = 1000, 860, 70, 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    t_max = max((s[0] for s in samples), default=1.0) or 1.0
    y_max = max((s[3] for s in samples), default=1.0) * 1.1 or 1.0
    draw.text((left, 8), title, fill="black", font=font)
    _panel(
        draw,
        font,
        (left, 60, width - right, 420),
        series,
        t_max,
        0.0,
        y_max,
        (10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000),
        "RSS (MiB)",
        warmup_s,
    )
    spread = max([abs(v) for pts in relative.values() for _, v in pts if _ >= warmup_s] + [FLAT_GROWTH * 100])
    lim = min(100.0, spread * 1.3)
    _panel(
        draw,
        font,
        (left, 480, width - right, 800),
        relative,
        t_max,
        -lim,
        lim,
        (0.5, 1, 2, 2.5, 5, 10, 20, 25, 50),
        f"RSS, % of the first sample after warm-up (shaded: +-{FLAT_GROWTH:.0%})",
        warmup_s,
        band=(-100 * FLAT_GROWTH, 100 * FLAT_GROWTH),
    )
    draw.text((width // 2 - 20, height - 36), "minutes", fill="black", font=font)
    for i, (name, points) in enumerate(sorted(series.items())):  # legend, right of the title
        colour = COLOURS[i % len(COLOURS)]
        x, y = left + 260 + 240 * (i % 3), 6 + 14 * (i // 3)
        draw.line([(x, y + 6), (x + 20, y + 6)], fill=colour, width=3)
        draw.text((x + 25, y), f"{name} (last {points[-1][1]:.0f} MiB)", fill="black", font=font)
    image.save(path)


# ------------------------------------------------------------------------------------ clients


class Payloads:
    """Every upload of the mix, built once."""

    def __init__(self, demo: dict, bomb_gib: float):
        from regionmir.image_reader import read_image
        from regionmir.synth.dataset_writer import DEFAULT_PRESET, render_phantom

        self.films = [Path(p).read_bytes() for p in demo["query_films"]]
        self.film_boxes = [_box(*reversed(read_image(f, source="query").pixels.shape[:2])) for f in self.films]
        self.dicom, _ = render_phantom(5, 101, 512, "dicom", DEFAULT_PRESET)  # the demo writes PNGs only
        self.dicom_box = _box(512, 512)
        self.png16 = grey16_png(4096)
        self.bomb = deflate_bomb_dicom(int(bomb_gib * 1024**3))
        self.nan, self.j2k = nan_rescale_dicom(), forged_jpeg2000_dicom()
        self.strip, self.aspect = strip_png(39000, 1500), strip_png(4000, 400)
        self.not_image = b"this is not an image, only text pretending to be one\n" * 40


class Client(threading.Thread):
    def __init__(
        self,
        index: int,
        base: str,
        api_key: str,
        payloads: Payloads,
        seed: int,
        t0: float,
        deadline: float,
        records: list,
        lock: threading.Lock,
        stop: threading.Event,
    ):
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.index, self.base, self.p = index, base, payloads
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self.rng = random.Random(seed * 1000 + index)
        self.t0, self.deadline, self.records, self.lock, self.stop = t0, deadline, records, lock, stop
        self.session = requests.Session()
        self.kinds, self.weights = list(MIX), [w for w, _, _ in MIX.values()]

    def _search(self, data: bytes, name: str, auth: bool = True, **fields) -> requests.Response:
        return self.session.post(
            self.base + "/v1/search",
            files={"image": (name, data)},
            data=fields,
            headers=self.auth if auth else None,
            timeout=180,
        )

    def _send(self, kind: str) -> requests.Response:
        p, rng = self.p, self.rng
        if kind == "good_box_png":
            i = rng.randrange(len(p.films))
            return self._search(p.films[i], "film.png", box=p.film_boxes[i], k=str(rng.choice((3, 5, 10))))
        if kind == "good_anatomy":
            return self._search(rng.choice(p.films), "film.png", anatomy=rng.choice(ANATOMIES), k="5")
        if kind == "good_png16_4096":
            return self._search(p.png16, "film16.png", box="100,100,1100,1100", k="3")
        if kind == "good_dicom":
            if rng.random() < 0.5:
                return self._search(p.dicom, "film.dcm", box=p.dicom_box, k="5")
            return self._search(p.dicom, "film.dcm", anatomy=rng.choice(ANATOMIES), k="5")
        if kind == "bad_deflate_bomb":
            return self._search(p.bomb, "bomb.dcm", box="1,1,50,50")
        if kind == "bad_nan_rescale":
            return self._search(p.nan, "nan.dcm", box="1,1,50,50")
        if kind == "bad_forged_j2k":
            return self._search(p.j2k, "j2k.dcm", box="1,1,50,50")
        if kind == "bad_strip_png":
            if rng.random() < 0.5:
                return self._search(p.strip, "strip.png", box="0,0,39000,1500")
            return self._search(p.strip, "strip.png", anatomy="cardiac silhouette")
        if kind == "bad_unicode_digit_anatomy":
            return self._search(rng.choice(p.films), "film.png", anatomy="²")
        if kind == "bad_key_trailing_newline":
            return self.session.get(self.base + "/v1/results/" + "0" * 32 + "%0A/crop", headers=self.auth, timeout=60)
        if kind == "bad_unknown_anatomy":
            return self._search(rng.choice(p.films), "film.png", anatomy="left kidney of the moon")
        if kind == "bad_not_an_image":
            return self._search(p.not_image, "film.png", box="1,1,50,50")
        if kind == "bad_aspect":
            return self._search(p.aspect, "aspect.png", box="1,1,50,50")
        if kind == "bad_no_api_key":
            return self._search(rng.choice(p.films), "film.png", auth=False, box="30,30,80,100")
        raise ValueError(kind)

    def _record(self, kind: str, send) -> requests.Response | None:
        started = time.monotonic()
        answer, status, reason = None, 0, ""
        try:
            answer = send()
            status = answer.status_code
            if answer.headers.get("content-type", "").startswith("application/json") and status != 200:
                try:
                    reason = str(answer.json().get("error", {}).get("reason", ""))
                except ValueError:
                    reason = "(body is not JSON)"
            elif status != 200:
                reason = f"(non-JSON body: {answer.headers.get('content-type', '')})"
        except requests.RequestException as exc:
            reason = f"client error: {type(exc).__name__}: {str(exc)[:160]}"
        seconds = time.monotonic() - started
        with self.lock:
            self.records.append((round(started - self.t0, 3), self.index, kind, status, reason, round(seconds, 4)))
        return answer

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            answer = self._record(kind, lambda kind=kind: self._send(kind))
            if kind in GOOD_SEARCHES and answer is not None and answer.status_code == 200:
                results = answer.json().get("results") or []
                for follow, (probability, _) in FOLLOW_UPS.items():
                    if results and self.rng.random() < probability and time.monotonic() < self.deadline:
                        url = self.rng.choice(results)["crop_url" if follow == "result_crop" else "image_url"]
                        self._record(
                            follow, lambda url=url: self.session.get(self.base + url, headers=self.auth, timeout=60)
                        )


# ------------------------------------------------------------------------------------ main


def summarise(records: list, duration_s: float) -> dict:
    per_kind: dict[str, Counter] = defaultdict(Counter)
    reasons: dict[str, Counter] = defaultdict(Counter)
    five_xx, client_errors, unexpected = [], [], Counter()
    expected = {k: (s, r) for k, (_, s, r) in MIX.items()} | {k: (s, "") for k, (_, s) in FOLLOW_UPS.items()}
    for t, client, kind, status, reason, seconds in records:
        per_kind[kind][str(status)] += 1
        if reason:
            reasons[kind][f"{status} {reason}"] += 1
        if status >= 500:
            five_xx.append(
                {"t_s": t, "client": client, "kind": kind, "status": status, "reason": reason, "seconds": seconds}
            )
        elif status == 0:
            client_errors.append({"t_s": t, "client": client, "kind": kind, "error": reason, "seconds": seconds})
        elif (status, reason) != expected[kind]:
            unexpected[f"{kind}: {status} {reason}"] += 1
    good = [(t, s) for t, _, kind, status, _, s in records if kind in GOOD_SEARCHES and status == 200]
    window = min(60.0, duration_s)
    first = [s for t, s in good if t < window]
    last = [s for t, s in good if t >= duration_s - window]
    lat = {
        "window_s": window,
        "first_minute": {"n": len(first), "p50_s": _pct(first, 50), "p99_s": _pct(first, 99)},
        "last_minute": {"n": len(last), "p50_s": _pct(last, 50), "p99_s": _pct(last, 99)},
    }
    for q in ("p50", "p99"):
        a, b = lat["first_minute"][f"{q}_s"], lat["last_minute"][f"{q}_s"]
        lat[f"{q}_ratio_last_first"] = round(b / a, 3) if a and b else None
    by_kind_seconds: dict[str, list[float]] = defaultdict(list)
    for _, _, kind, _status, _, seconds in records:
        by_kind_seconds[kind].append(seconds)
    return {
        "requests": len(records),
        "requests_per_s": round(len(records) / duration_s, 2) if duration_s else None,
        "good_fraction": round(sum(1 for r in records if not r[2].startswith("bad_")) / max(1, len(records)), 3),
        "per_kind": {k: dict(sorted(v.items())) for k, v in sorted(per_kind.items())},
        "reasons": {k: dict(v) for k, v in sorted(reasons.items())},
        "seconds_per_kind": {
            k: {"p50": _pct(v, 50), "p99": _pct(v, 99), "max": round(max(v), 4)}
            for k, v in sorted(by_kind_seconds.items())
        },
        "5xx_count": len(five_xx),
        "5xx": five_xx[:100],
        "5xx_by_reason": dict(Counter(f"{e['status']} {e['reason']}" for e in five_xx)),
        "client_errors_count": len(client_errors),
        "client_errors": client_errors[:20],
        "unexpected_answers": dict(unexpected),
        "good_search_latency": lat,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sample-every-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth before this does not count")
    parser.add_argument("--out", help="where rss.csv, rss.png and requests.csv go (default: a new temp dir)")
    parser.add_argument("--bomb-gib", type=float, default=0.25, help="what the deflated DICOM inflates to")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="regionmir-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    duration = args.minutes * 60.0
    warmup = args.warmup_s if args.warmup_s < duration else duration / 3
    if warmup != args.warmup_s:
        print(f"soak: a {duration:.0f} s run: warm-up shortened to {warmup:.0f} s", file=sys.stderr, flush=True)

    import ray
    from ray import serve

    from serving.deployments import start_service

    records: list = []
    lock, stop = threading.Lock(), threading.Event()
    clients: list[Client] = []
    sampler: RssSampler | None = None
    started_at = None
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="regionmir-soak-demo-") as workdir:
        print("soak: building the demo index and the payloads", file=sys.stderr, flush=True)
        demo = build_random_model_index_subprocess(workdir, images=6, size=160, seed=5)
        payloads = Payloads(demo, args.bomb_gib)
        api_key = secrets.token_urlsafe(24)
        settings = ServeSettings.from_dict(
            {
                "model": demo["model"],
                "milvus": demo["milvus"],
                "http": {"host": "127.0.0.1", "port": _free_port()},
                "auth": {"api_key": api_key},
                # the shipped limits (32 MB uploads, 60 Mpx, longer side 8192, 4:1, one film in memory per replica)
                "encoder": {"min_replicas": 1, "max_replicas": 1},
                "ingress": {"min_replicas": 1, "max_replicas": 1},
                "ray": {"num_cpus": 4, "metrics_export_port": _free_port()},
            }
        )
        try:
            base = start_service(settings, ready_timeout_s=600)
            print(
                f"soak: service ready at {base}; {args.clients} clients for {args.minutes:g} min",
                file=sys.stderr,
                flush=True,
            )
            t0 = time.monotonic()
            sampler = RssSampler(t0, args.sample_every_s)
            sampler.start()
            if not sampler.samples:
                print("soak: WARNING no Serve process found to sample", file=sys.stderr, flush=True)
            clients = [
                Client(i, base, api_key, payloads, args.seed, t0, t0 + duration, records, lock, stop)
                for i in range(args.clients)
            ]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            started_at = t0
            duration_s = time.monotonic() - t0
            sampler.stop()
            try:
                healthy: int | str = requests.get(base + "/healthz", timeout=30).status_code
            except requests.RequestException as exc:
                healthy = f"no answer ({type(exc).__name__})"
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=200)
            if sampler is not None:
                sampler.stop()
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
    assert started_at is not None
    samples = sorted(sampler.samples) if sampler else []
    write_rss_csv(out / "rss.csv", samples)
    with open(out / "requests.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "client", "kind", "status", "reason", "seconds"])
        writer.writerows(sorted(records))
    plot_rss(out / "rss.png", samples, warmup, f"soak: {args.clients} clients, {args.minutes:g} min")
    rss, flat, changed = rss_summary(samples, warmup)
    summary = summarise(records, duration_s)
    result = {
        "benchmark": "soak",
        "minutes": args.minutes,
        "clients": args.clients,
        "seed": args.seed,
        "duration_s": round(duration_s, 1),
        "warmup_s": warmup,
        "sample_every_s": args.sample_every_s,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "healthz_after": healthy,
        **summary,
        "zero_5xx": summary["5xx_count"] == 0,
        "rss_samples": len({s[0] for s in samples}),
        "rss": rss,
        "rss_processes_changed": changed,
        "flat": flat,
        "flat_rule": f"per process: least-squares growth after warm-up < {FLAT_GROWTH:.0%} "
        "of its first sample after warm-up; no process appeared or vanished",
        "files": {
            "rss_csv": str(out / "rss.csv"),
            "rss_png": str(out / "rss.png"),
            "requests_csv": str(out / "requests.csv"),
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
