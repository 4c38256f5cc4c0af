"""``regionmir ablate``: the paper's comparison, trained on the same data and budget.

All arms are phases of one Ray Train run (one worker group; see :mod:`training.train_loop`).

(a) supervised from scratch, (b) SimCLR region pretraining + fine-tuning, (c) supervised-
contrastive region pretraining + fine-tuning, (d) co-training (cross-entropy + contrastive) from
scratch. The baselines (a) and (d) get as many epochs as pretraining + fine-tuning together, so
every arm sees the same number of passes over the training crops. Every arm is evaluated on the
test split (overall and per anatomy over the trained regions) and the table is written as
``OUT/ablation.json`` and ``OUT/ablation.md``.

``--seeds N`` repeats the whole comparison with seeds ``seed … seed+N−1`` and ``--label-fraction
0.05,0.2,1.0`` at each fraction of labelled training films (fine-tuning sees that fraction's
labels; pretraining every film). Each (fraction, seed) is one run in
``OUT/fraction-F/seed-S/``; ``OUT/ablation_summary.json`` and ``.md`` report every arm's mean ± sd
over seeds and, for every pair of arms, the difference with a paired bootstrap 95 % interval over
the test crops (:mod:`regionmir.paired_bootstrap`). ``--resume`` keeps finished runs and continues
an interrupted one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

from regionmir import storage
from regionmir.command_help import command_parser
from regionmir.console import configure_command_logging
from regionmir.dataset import films_by_split
from regionmir.encoder import load_preset
from regionmir.errors import DatasetError, RegionMIRError
from regionmir.paired_bootstrap import mean_and_sd, paired_bootstrap
from regionmir.roi_crop import CropConfig
from regionmir.storage import S3Options

from .evaluate_classifier import evaluate_classifier
from .roi_pipeline import RoiPipelineConfig, cached_roi_datasets
from .run import Phase, TrainOptions, default_cache_root, region_ids, run_phases

log = logging.getLogger(__name__)

PAPER = {"best baseline (paper)": 92.24, "region pretraining (paper)": 94.12}


ARMS = {
    "a": "supervised from scratch",
    "b": "SimCLR region pretraining + fine-tune",
    "c": "SupCon region pretraining + fine-tune",
    "d": "co-training (CE + SimCLR)",
}


def ablation_phases(pretrain_epochs: int, finetune_epochs: int, arms: Sequence[str]) -> list[tuple[str, list[Phase]]]:
    """Each arm's phases; (a) and (d) get as many epochs as pretraining + fine-tuning together."""
    total = pretrain_epochs + finetune_epochs
    plans = {
        "a": [Phase("a-supervised", "finetune", total)],
        "b": [
            Phase("b-simclr-pretrain", "pretrain", pretrain_epochs, objective="simclr"),
            Phase("b-simclr-finetune", "finetune", finetune_epochs, init="phase:b-simclr-pretrain"),
        ],
        "c": [
            Phase("c-supcon-pretrain", "pretrain", pretrain_epochs, objective="supcon"),
            Phase("c-supcon-finetune", "finetune", finetune_epochs, init="phase:c-supcon-pretrain"),
        ],
        "d": [Phase("d-cotrain", "finetune", total, objective="simclr", cotrain=True)],
    }
    unknown = [arm for arm in arms if arm not in plans]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}: choose from {sorted(plans)}")
    return [(arm, plans[arm]) for arm in arms]


#: Cut-off of the crop-retrieval figures reported beside accuracy.
#: How many of each arm's largest confusions the table lists.
TOP_CONFUSIONS = 6
RETRIEVAL_K = 10


def crop_retrieval(queries: dict, database: dict, k: int) -> tuple:
    """(Q,) P@k and standard AP@k of every test crop retrieving from the training crops by exact
    cosine search over the embedding ``regionmir index`` stores (relevant = same anatomy; R = the
    training crops of that anatomy). The index and ``regionmir evaluate`` give the same ranking
    up to the ANN's recall."""
    import numpy as np

    from regionmir.retrieval_metrics import average_precision_at_k, exact_knn, precision_at_k

    labels = np.asarray(database["y_true"])
    query_labels = np.asarray(queries["y_true"])
    neighbours, _ = exact_knn(queries["embeddings"], database["embeddings"], k)
    retrieved = labels[neighbours]
    num_relevant = np.bincount(labels, minlength=int(max(labels.max(), query_labels.max())) + 1)[query_labels]
    return (
        precision_at_k(query_labels, retrieved, k),
        average_precision_at_k(query_labels, retrieved, k, num_relevant),
    )


def run_ablation(
    base: TrainOptions, pretrain_epochs: int, finetune_epochs: int, arms: Sequence[str] = ("a", "b", "c", "d")
) -> dict:
    """Train every arm as phases of one Ray Train run, then test each arm's best model."""
    started = time.perf_counter()
    s3 = S3Options.from_env()
    out = base.out
    plan = ablation_phases(pretrain_epochs, finetune_epochs, arms)
    summary = run_phases(base, [phase for _, phases in plan for phase in phases], s3)
    trained = time.perf_counter()
    records, _ = films_by_split(base.data, s3, ("train", "test"))
    if not records["test"]:
        raise DatasetError(base.data, "no test films (split 'test' is empty): nothing to compare the arms on")
    crop_size = load_preset(base.preset).crop_size
    pipeline = RoiPipelineConfig(crop=CropConfig(size=crop_size), anatomy_ids=region_ids(base.regions))
    cached = cached_roi_datasets(records, pipeline, default_cache_root(base) or storage.join(out, "crop-cache"), s3)[
        "datasets"
    ]
    epoch_seconds, curves = _phase_history(summary, s3)
    rows = []
    for arm, phases in plan:
        last = phases[-1].name
        report = evaluate_classifier(summary["phases"][last]["best"], cached["test"], s3, embed=True)
        database = evaluate_classifier(summary["phases"][last]["best"], cached["train"], s3, embed=True)
        precision, average_precision = crop_retrieval(report, database, RETRIEVAL_K)
        order = sorted(range(len(report["keys"])), key=report["keys"].__getitem__)
        test_keys = [report["keys"][i] for i in order]
        correct = "".join("1" if report["y_true"][i] == report["y_pred"][i] else "0" for i in order)
        report.pop("y_true"), report.pop("y_pred"), report.pop("keys"), report.pop("embeddings")
        rows.append(
            {
                "arm": arm,
                "name": ARMS[arm],
                "test_accuracy": report["accuracy"],
                f"p@{RETRIEVAL_K}": float(precision.mean()),
                f"map@{RETRIEVAL_K}": float(average_precision.mean()),
                "test_ap": [round(float(average_precision[i]), 5) for i in order],
                "balanced_accuracy": report["balanced_accuracy"],
                "val_accuracy": summary["phases"][last]["best_metrics"].get("val_accuracy"),
                "per_anatomy": {k: v["accuracy"] for k, v in report["per_class"].items()},
                "model_version": report["model_version"],
                "model": summary["phases"][last]["best"],
                "train_minutes": round(sum(epoch_seconds.get(p.name, 0.0) for p in phases) / 60, 1),
                "val_accuracy_by_epoch": curves.get(last, []),
                "top_confusions": report["top_confusions"][:TOP_CONFUSIONS],
                "epochs": {p.name: p.epochs for p in phases},
                "test_keys": test_keys,
                "test_correct": correct,
            }
        )
        log.info(
            f"({arm}) {ARMS[arm]}: test accuracy {report['accuracy']:.4f}, crop retrieval from the "
            f"training crops p@{RETRIEVAL_K} {precision.mean():.4f}, mAP@{RETRIEVAL_K} {average_precision.mean():.4f}",
        )
    result = {
        "rows": rows,
        "paper": PAPER,
        "pretrain_epochs": pretrain_epochs,
        "finetune_epochs": finetune_epochs,
        "data": base.data,
        "preset": base.preset,
        "regions": base.regions,
        "workers": base.workers,
        "seed": base.seed,
        "label_fraction": base.label_fraction,
        "labelled_train_films": summary.get("labelled_train_films"),
        "train_films": summary["films"].get("train"),
        "train_crops": summary["train_crops"],
        "test_films": len(records["test"]),
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "training_minutes": round((trained - started) / 60, 1),
    }
    storage.write_text(storage.join(out, "ablation.json"), json.dumps(result, indent=1), s3)
    storage.write_text(storage.join(out, "ablation.md"), markdown_table(result), s3)
    return result


def run_ablation_grid(
    base: TrainOptions,
    pretrain_epochs: int,
    finetune_epochs: int,
    arms: Sequence[str],
    seeds: int = 1,
    fractions: Sequence[float] = (1.0,),
    resume: bool = False,
) -> dict:
    """Every arm at every label fraction with ``seeds`` seeds: one run each, then the summary."""
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    fractions = sorted(set(float(f) for f in fractions), reverse=True)
    for fraction in fractions:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"label fractions must be in (0, 1], got {fraction:g}")
    s3 = S3Options.from_env()
    single = len(fractions) == 1 and seeds == 1
    runs, started = [], time.perf_counter()
    for number, (fraction, offset) in enumerate(itertools.product(fractions, range(seeds)), start=1):
        seed = base.seed + offset
        out = base.out if single else storage.join(base.out, f"fraction-{fraction:g}", f"seed-{seed}")
        done = storage.join(out, "ablation.json")
        log.info(
            f"run {number}/{len(fractions) * seeds}: label fraction {fraction:g}, seed {seed} → {out}",
        )
        if resume and storage.exists(done, s3):
            log.info(f"{done} exists: kept (--resume)")
            runs.append(json.loads(storage.read_text(done, s3)))
            continue
        runs.append(
            run_ablation(
                replace(base, out=out, seed=seed, label_fraction=fraction, resume=resume),
                pretrain_epochs,
                finetune_epochs,
                arms,
            )
        )
    summary = summarise_runs(runs, arms)
    summary["minutes"] = round((time.perf_counter() - started) / 60, 1)
    storage.write_text(storage.join(base.out, "ablation_summary.json"), json.dumps(summary, indent=1), s3)
    storage.write_text(storage.join(base.out, "ablation_summary.md"), summary_markdown(summary), s3)
    return summary


def summarise_runs(runs: list[dict], arms: Sequence[str], resamples: int = 2000) -> dict:
    """Mean ± sd over seeds per (fraction, arm), and every pair of arms' paired bootstrap interval.

    Crops are matched by key across arms and seeds; only crops every run tested are compared."""
    import numpy as np

    by_fraction: dict[float, list[dict]] = {}
    for run in runs:
        by_fraction.setdefault(float(run.get("label_fraction", 1.0)), []).append(run)
    tables = []
    for fraction in sorted(by_fraction, reverse=True):
        group = by_fraction[fraction]
        keys = sorted(set.intersection(*(set(r["test_keys"]) for run in group for r in run["rows"])))
        if not keys:
            raise DatasetError(group[0]["data"], "the runs share no test crops to compare arms on")
        correct: dict[str, np.ndarray] = {}
        ap: dict[str, np.ndarray] = {}
        arm_rows = []
        map_name = f"map@{RETRIEVAL_K}"
        for arm in arms:
            per_seed = [next(r for r in run["rows"] if r["arm"] == arm) for run in group]
            scores, aps = [], []
            for row in per_seed:
                bits = dict(zip(row["test_keys"], row["test_correct"]))
                scores.append([bits[k] == "1" for k in keys])
                if "test_ap" in row:
                    per_crop = dict(zip(row["test_keys"], row["test_ap"]))
                    aps.append([per_crop[k] for k in keys])
            correct[arm] = np.asarray(scores, dtype=np.float64)
            if len(aps) == len(per_seed):
                ap[arm] = np.asarray(aps, dtype=np.float64)
            mean, sd = mean_and_sd([r["test_accuracy"] for r in per_seed])
            entry = {
                "arm": arm,
                "name": ARMS[arm],
                "test_accuracy_mean": mean,
                "test_accuracy_sd": sd,
                "test_accuracy_by_seed": [r["test_accuracy"] for r in per_seed],
                "val_accuracy_by_seed": [r.get("val_accuracy") for r in per_seed],
                "train_minutes_mean": mean_and_sd([r["train_minutes"] for r in per_seed])[0],
            }
            if arm in ap:
                entry[f"{map_name}_mean"], entry[f"{map_name}_sd"] = mean_and_sd([r[map_name] for r in per_seed])
            arm_rows.append(entry)
        differences = []
        for first, second in itertools.combinations(arms, 2):
            result = paired_bootstrap(correct[second], correct[first], resamples=resamples)
            difference = {"comparison": f"{second} − {first}", "first": second, "second": first, **result.as_dict()}
            if first in ap and second in ap:
                difference[map_name] = paired_bootstrap(ap[second], ap[first], resamples=resamples).as_dict()
            differences.append(difference)
        tables.append(
            {
                "label_fraction": fraction,
                "seeds": [run["seed"] for run in group],
                "labelled_train_films": group[0].get("labelled_train_films"),
                "train_films": group[0].get("train_films"),
                "test_crops": len(keys),
                "arms": arm_rows,
                "differences": differences,
            }
        )
    first = runs[0]
    return {
        "data": first["data"],
        "preset": first["preset"],
        "workers": first["workers"],
        "pretrain_epochs": first["pretrain_epochs"],
        "finetune_epochs": first["finetune_epochs"],
        "test_films": first["test_films"],
        "paper": PAPER,
        "fractions": tables,
        "run_minutes": round(sum(run["minutes"] for run in runs), 1),
    }


def summary_markdown(summary: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = [
        f"Data: {summary['data']} ({summary['test_films']} test films); preset {summary['preset']}, "
        f"{summary['workers']} worker(s); {summary['pretrain_epochs']} + {summary['finetune_epochs']} epochs "
        f"((a) and (d): the sum); {summary['run_minutes']} min of runs.",
        "",
        "Test accuracy (%), mean ± sd over seeds:",
        "",
        "| label fraction | labelled films | seeds | "
        + " | ".join(f"({row['arm']}) {row['name']}" for row in summary["fractions"][0]["arms"])
        + " |",
        "|---|---|---|" + "---|" * len(summary["fractions"][0]["arms"]),
    ]
    for table in summary["fractions"]:
        cells = [f"{pct(r['test_accuracy_mean'])} ± {pct(r['test_accuracy_sd'])}" for r in table["arms"]]
        lines.append(
            f"| {table['label_fraction']:g} | {table['labelled_train_films']} of {table['train_films']} | "
            f"{len(table['seeds'])} | " + " | ".join(cells) + " |"
        )
    map_name = f"map@{RETRIEVAL_K}"
    if all(f"{map_name}_mean" in r for table in summary["fractions"] for r in table["arms"]):
        lines += [
            "",
            f"Crop retrieval from the training crops, standard mAP@{RETRIEVAL_K} (%), mean ± sd over seeds:",
            "",
            "| label fraction | " + " | ".join(f"({r['arm']})" for r in summary["fractions"][0]["arms"]) + " |",
            "|---|" + "---|" * len(summary["fractions"][0]["arms"]),
        ]
        for table in summary["fractions"]:
            lines.append(
                f"| {table['label_fraction']:g} | "
                + " | ".join(f"{pct(r[f'{map_name}_mean'])} ± {pct(r[f'{map_name}_sd'])}" for r in table["arms"])
                + " |"
            )
    lines += [
        "",
        "Differences between arms (percentage points, averaged over seeds), with a paired bootstrap "
        "95 % interval over the test crops:",
        "",
        f"| label fraction | comparison | accuracy difference | 95 % interval | excludes 0 | mAP@{RETRIEVAL_K} "
        "difference | 95 % interval | excludes 0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for table in summary["fractions"]:
        for d in table["differences"]:
            m = d.get(map_name)
            retrieval = (
                (f"{pct(m['mean'])} | [{pct(m['low'])}, {pct(m['high'])}] | {'yes' if m['excludes_zero'] else 'no'}")
                if m
                else "– | – | –"
            )
            lines.append(
                f"| {table['label_fraction']:g} | ({d['first']}) − ({d['second']}) | {pct(d['mean'])} | "
                f"[{pct(d['low'])}, {pct(d['high'])}] | {'yes' if d['excludes_zero'] else 'no'} | "
                f"{retrieval} |"
            )
    lines += [
        "",
        "The intervals cover the sampling of the test crops at these seeds; how far a seed moves an arm is "
        "the sd above — a difference smaller than the seeds' sd needs more seeds, whatever its interval.",
    ]
    lines += [
        "",
        "Paper (Chest ImaGenome, full labels): "
        + "; ".join(f"{name} {value:.2f} %" for name, value in summary["paper"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _phase_history(summary: dict, s3: S3Options | None) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Training seconds and the validation-accuracy curve per phase, from the run's per-epoch metrics."""
    seconds: dict[str, float] = {}
    curves: dict[str, list[float]] = {}
    path = storage.join(summary["options"]["out"], "metrics.jsonl")
    for line in storage.read_text(path, s3).splitlines():
        m = json.loads(line)
        seconds[m["phase"]] = seconds.get(m["phase"], 0.0) + m["train_crops"] / max(1e-9, m["crops_per_s"])
        if "val_accuracy" in m:
            curves.setdefault(m["phase"], []).append(round(float(m["val_accuracy"]), 4))
    return seconds, curves


def markdown_table(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"Data: {result['data']} ({result['train_films']} training films, {result['train_crops']} training "
        f"crops, {result['test_films']} test films); preset {result['preset']}, {result['workers']} worker(s); "
        f"{result['minutes']} min in all.",
        "",
        "| arm | method | epochs | validation accuracy by (fine-tuning) epoch | best validation | test accuracy "
        f"| balanced test accuracy | crop p@{RETRIEVAL_K} | crop mAP@{RETRIEVAL_K} | training min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val = f"{100 * r['val_accuracy']:.2f} %" if r.get("val_accuracy") is not None else "–"
        curve = " → ".join(f"{100 * v:.1f}" for v in r.get("val_accuracy_by_epoch", [])) or "–"
        epochs = " + ".join(str(e) for e in r["epochs"].values())
        retrieval = " | ".join(f"{r[m]:.4f}" if m in r else "–" for m in (f"p@{RETRIEVAL_K}", f"map@{RETRIEVAL_K}"))
        lines.append(
            f"| {r['arm']} | {r['name']} | {epochs} | {curve} | {val} | {100 * r['test_accuracy']:.2f} % | "
            f"{100 * r['balanced_accuracy']:.2f} % | {retrieval} | {r['train_minutes']} |"
        )
    for name, value in result["paper"].items():
        lines.append(f"| – | {name} | | | | {value:.2f} % | | | | |")
    anatomies = sorted({a for r in rows for a in r["per_anatomy"]})
    lines += ["", "| anatomy | " + " | ".join(f"({r['arm']})" for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for anatomy in anatomies:
        cells = [f"{100 * r['per_anatomy'][anatomy]:.1f}" if anatomy in r["per_anatomy"] else "–" for r in rows]
        lines.append(f"| {anatomy} | " + " | ".join(cells) + " |")
    if any(r.get("top_confusions") for r in rows):
        lines += ["", "Largest confusions on the test crops (true → predicted: count):", ""]
        for r in rows:
            pairs = "; ".join(f"{c['true']} → {c['predicted']}: {c['count']}" for c in r.get("top_confusions", []))
            lines.append(f"- ({r['arm']}) {pairs or 'none'}")
    return "\n".join(lines) + "\n"


def ablate_main(argv: Sequence[str]) -> int:
    parser = command_parser(prog="regionmir ablate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=TrainOptions.workers)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=TrainOptions.batch_size)
    parser.add_argument("--preset", default=TrainOptions.preset)
    parser.add_argument("--regions", choices=("standard29", "all36"), default=TrainOptions.regions)
    parser.add_argument("--arms", default="abcd", help="which arms to run, e.g. 'ab'")
    parser.add_argument("--seed", type=int, default=TrainOptions.seed, help=f"first seed (default {TrainOptions.seed})")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeat every arm with this many seeds (seed, seed+1, …) and report mean ± sd "
        "and paired bootstrap intervals (default 1)",
    )
    parser.add_argument(
        "--label-fraction",
        default="1.0",
        type=_fractions,
        help="comma-separated fractions of the training films whose labels fine-tuning sees, "
        "e.g. 0.05,0.2,1.0 (pretraining sees every film; default 1.0)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs that finished in OUT and continue an interrupted one"
    )
    args = parser.parse_args(list(argv))
    configure_command_logging("ablate", args)
    base = TrainOptions(
        data=args.data,
        out=args.out,
        workers=args.workers,
        gpu=args.gpu,
        batch_size=args.batch_size,
        preset=args.preset,
        regions=args.regions,
        seed=args.seed,
        also_cache=("test",),
    )
    try:
        summary = run_ablation_grid(
            base,
            args.pretrain_epochs,
            args.finetune_epochs,
            tuple(args.arms),
            args.seeds,
            args.label_fraction,
            args.resume,
        )
    except (RegionMIRError, ValueError) as exc:
        print(f"regionmir ablate: {exc}", file=sys.stderr)
        return 2
    print(summary_markdown(summary))
    return 0


def _fractions(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.05,0.2,1.0, got {text!r}"
        ) from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"label fractions must be in (0, 1], got {text!r}")
    return values
