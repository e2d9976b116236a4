"""Calibrated, not only ordered (issue 11): the levels of the stated confidence against accuracy, per variant.

    python -m experiments.calibration_report --out runs/toy_ablation --seeds 1 2 3 --untuned_seeds 7 \
        --variants ppo_alpha0 conf_tokens brier_worst ... [--report docs/results_calibration.md]

Reads the runs that ``experiments/toy_ablation.py`` made (same ``--out``) and checks the issue's targets on
the held-out countries, for the mean over the tuning seeds and, apart, for each seed nobody tuned on:
ECE ≤ 0.10 with AUROC ≥ 0.75, both better than SFT and PPO α = 0; parse failures ≤ 1 %; AUROC inside
the medium difficulty ≥ 0.60; accuracy within 2 points of PPO α = 0 and at most 2 points below SFT.
Parse failures are reported twice: in evaluation (greedy answers) and over the last 50 PPO steps' rollouts.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from experiments.toy_ablation import DEFAULT_OUT, VARIANTS, Settings, Variant, _mean, _ms, aggregate
from step4_evaluation.confidence_readout import READOUTS
from step4_evaluation.metrics import auroc, confidence_and_correct, ece, ece_if_calibrated
from step4_evaluation.recalibration import RECALIBRATORS, fit_on_dev, recalibrated_test
from utils.args import Parser, seed, share_below_one
from utils.jsonl import read_jsonl
from worlds.toy_world import ToyWorldConfig

TARGETS = {"ece": 0.10, "auroc": 0.75, "parse_failure_rate": 0.01, "auroc_medium": 0.60, "accuracy_drop": 0.02}
COLUMNS = ("accuracy", "Δacc SFT", "Δacc α=0", "ece", "ece if calibrated", "auroc", "auroc easy", "auroc medium",
           "auroc hard", "conf easy", "conf medium", "conf hard", "parse failures (eval)", "parse failures (PPO, last 50)")
LAST_STEPS = 50


def training_parse_failures(out: Path, seeds: list[int], variant: str) -> list[float]:
    """Mean parse-failure rate of the rollouts over each seed's last :data:`LAST_STEPS` PPO steps."""
    rates = []
    for seed in seeds:
        log = out / f"seed{seed}/out/{variant}/train_log.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        rates.append(float(np.mean([r["parse_failure_rate"] for r in rows[-LAST_STEPS:]])) if rows else float("nan"))
    return rates


def ece_floors(s: Settings, variant: str) -> list[float]:
    """Each seed's ECE if the variant's held-out confidences were exact probabilities (the sampling floor)."""
    floors = []
    for seed in s.seeds:
        path = s.results(seed) / variant / "toy/zero_shot/predictions.jsonl"
        confidence, _ = confidence_and_correct(read_jsonl(path))
        floors.append(ece_if_calibrated(confidence))
    return floors


def _row_cells(table: dict[str, dict], name: str, s: Settings) -> list[str]:
    entry, sft, a0 = (table[f"toy: {n}/zero_shot"] for n in (name, "sft", "ppo_alpha0"))
    d_sft = [a - b for a, b in zip(entry["accuracy"], sft["accuracy"])]
    d_a0 = [a - b for a, b in zip(entry["accuracy"], a0["accuracy"])]
    train = training_parse_failures(s.out, s.seeds, name) if name != "sft" else [float("nan")] * len(s.seeds)
    return [_ms(entry["accuracy"]), _ms(d_sft), _ms(d_a0), _ms(entry["ece"]), _ms(ece_floors(s, name)),
            _ms(entry["auroc"]),
            *(_ms(entry.get(f"auroc_{lvl}", [])) for lvl in ("easy", "medium", "hard")),
            *(_ms(entry.get(f"mean_confidence_{lvl}", [])) for lvl in ("easy", "medium", "hard")),
            _ms(entry["parse_failure_rate"]), _ms(train)]


def targets_met(table: dict[str, dict], name: str) -> dict[str, bool]:
    """Each target of the issue for one variant, on the means over the table's seeds."""
    entry, sft, a0 = (table[f"toy: {n}/zero_shot"] for n in (name, "sft", "ppo_alpha0"))
    ece, auroc = _mean(entry["ece"]), _mean(entry["auroc"])
    accuracy = _mean(entry["accuracy"])
    return {"ECE ≤ 0.10": ece <= TARGETS["ece"],
            "AUROC ≥ 0.75": auroc >= TARGETS["auroc"],
            "ECE and AUROC better than SFT and PPO α=0": all(ece < _mean(o["ece"]) and auroc > _mean(o["auroc"])
                                                           for o in (sft, a0)),
            "parse failures ≤ 1 %": _mean(entry["parse_failure_rate"]) <= TARGETS["parse_failure_rate"],
            "medium AUROC ≥ 0.60": _mean(entry.get("auroc_medium", [np.nan])) >= TARGETS["auroc_medium"],
            "accuracy within 2 points of PPO α=0": accuracy >= _mean(a0["accuracy"]) - TARGETS["accuracy_drop"],
            "accuracy ≥ SFT − 2 points": accuracy >= _mean(sft["accuracy"]) - TARGETS["accuracy_drop"]}


def _table(s: Settings) -> tuple[dict[str, dict], list[str]]:
    table = aggregate(s)
    names = ["sft", *(v.name for v in s.variants)]
    lines = ["| variant | " + " | ".join(COLUMNS) + " | targets met |", "|" + "---|" * (len(COLUMNS) + 2)]
    for name in names:
        met = "" if name in ("sft", "ppo_alpha0") else \
            f"{sum(targets_met(table, name).values())}/{len(targets_met(table, name))}"
        lines.append(f"| {name} | " + " | ".join(_row_cells(table, name, s)) + f" | {met} |")
    return table, lines


def _evaluated(s: Settings, seed: int, variant: str) -> bool:
    return (s.results(seed) / variant / "toy/zero_shot/summary.json").is_file()


READOUT_TITLES = {"stated": "the number the greedy answer states (the paper's readout)",
                  "expected": "the mean of the model's distribution over 0.0 … 1.0 where it states its confidence "
                              "(`--confidence_readout expected`; same greedy answers)"}


def readout_section(out: Path, seeds: list[int], untuned: list[int], variants: tuple[Variant, ...],
                    readout: str, dev_fraction: float = 0.0) -> list[str]:
    """The table and the targets for one confidence readout: the tuning seeds' means, then each untuned seed."""
    s = Settings(out=out, seeds=seeds, ppo_steps=0, variants=variants, jobs=1, confidence_readout=readout,
                 dev_fraction=dev_fraction)
    done = tuple(v for v in variants if all(_evaluated(s, seed, v.name) for seed in seeds))
    table, lines = _table(replace(s, variants=done))
    text = [f"## Confidence read as {READOUT_TITLES[readout]}", "", f"### Tuning seeds ({', '.join(map(str, seeds))})",
            "", *lines, ""]
    if len(done) < len(variants):
        text += [f"Not evaluated with this readout on every tuning seed: "
                 f"{', '.join(v.name for v in variants if v not in done)}.", ""]
    text += ["Targets:", ""]
    for v in done:
        if v.name != "ppo_alpha0":
            met = targets_met(table, v.name)
            text.append(f"- `{v.name}`: " + "; ".join(f"{k}: {'met' if ok else '**not met**'}" for k, ok in met.items()))
    for seed in untuned:
        done = tuple(v for v in variants if _evaluated(replace(s, seeds=[seed]), seed, v.name))
        untuned_table, untuned_lines = _table(replace(s, seeds=[seed], variants=done))
        missing = [v.name for v in variants if v not in done]
        text += ["", f"### Seed {seed}, not tuned on", "", *untuned_lines, ""]
        if missing:
            text += [f"Not yet evaluated on this seed: {', '.join(missing)}.", ""]
        for v in done:
            if v.name != "ppo_alpha0":
                met = targets_met(untuned_table, v.name)
                text.append(f"- `{v.name}`: {sum(met.values())}/{len(met)} targets met"
                            + "".join(f"; {k}: **not met**" for k, ok in met.items() if not ok))
    return text + [""]


# ---------------------------------------------------------------- recalibration on the dev split (issue 21)

RECALIBRATION_TARGETS = {"ece": 0.05, "auroc_change": 0.01}


def recalibrated(s: Settings, seed: int, variant: str, method: str) -> dict[str, float]:
    """Raw and ``method``-recalibrated test ECE and AUROC of one run, the map refitted on its dev answers as step 4
    fits it (so every method is compared on the same answers, whichever one step 4 ran with), and the recalibrated
    confidences' ECE floor (:func:`ece_if_calibrated`: a step map has few values, so a lower floor)."""
    folder = s.results(seed) / variant / "toy/zero_shot"
    summary = json.loads((folder / "summary.json").read_text())
    records = read_jsonl(folder / "predictions.jsonl")
    if not any(r.get("split") == "dev" for r in records):
        raise SystemExit(f"error: {folder}/predictions.jsonl has no dev split: evaluate with the harness's "
                         "--dev_fraction first")
    missing, n_bins = summary["missing_confidence"], summary["n_bins"]
    mapped, correct = recalibrated_test(records, fit_on_dev(records, method, missing, n_bins), missing)
    return {"ece": summary["ece"], "auroc": summary["auroc"], "ece_recalibrated": ece(mapped, correct, n_bins),
            "auroc_recalibrated": auroc(mapped, correct), "ece_floor_recalibrated": ece_if_calibrated(mapped, n_bins),
            "n_dev": sum(r.get("split") == "dev" and r["correct"] is not None for r in records)}


def recalibration_table(s: Settings, names: list[str], methods: list[str]) -> dict[tuple[str, str], dict]:
    """(variant, method) → each metric of :func:`recalibrated` over the settings' seeds."""
    table = {}
    for name in names:
        for method in methods:
            per_seed = [recalibrated(s, seed, name, method) for seed in s.seeds]
            table[name, method] = {key: [p[key] for p in per_seed] for key in per_seed[0]}
            table[name, method]["auroc_change"] = [p["auroc_recalibrated"] - p["auroc"] for p in per_seed]
            table[name, method]["auroc_shift"] = [abs(d) for d in table[name, method]["auroc_change"]]
    return table


def best_method(table: dict[tuple[str, str], dict], variant: str, methods: list[str]) -> str:
    """The method with the lowest mean recalibrated ECE among those that keep AUROC within the target (the mean
    over seeds of each seed's |change|: a rise on one seed does not excuse a fall on another; all methods when
    none does): chosen on the tuning seeds only."""
    keeping = [m for m in methods if _mean(table[variant, m]["auroc_shift"]) <= RECALIBRATION_TARGETS["auroc_change"]]
    return min(keeping or methods, key=lambda m: _mean(table[variant, m]["ece_recalibrated"]))


def recalibration_met(entry: dict) -> dict[str, bool]:
    return {f"ECE ≤ {RECALIBRATION_TARGETS['ece']}": _mean(entry["ece_recalibrated"]) <= RECALIBRATION_TARGETS["ece"],
            f"AUROC within {RECALIBRATION_TARGETS['auroc_change']} of the raw one":
                _mean(entry["auroc_shift"]) <= RECALIBRATION_TARGETS["auroc_change"]}


def _recalibration_lines(table: dict[tuple[str, str], dict], names: list[str], methods: list[str]) -> list[str]:
    lines = ["| variant | method | ece (raw) | ece recalibrated | its ece if calibrated | auroc (raw) | "
             "auroc recalibrated | Δauroc |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        for method in methods:
            e = table[name, method]
            lines.append(f"| {name} | {method} | {_ms(e['ece'])} | {_ms(e['ece_recalibrated'])} | "
                         f"{_ms(e['ece_floor_recalibrated'])} | {_ms(e['auroc'])} | {_ms(e['auroc_recalibrated'])} | "
                         f"{_ms(e['auroc_change'])} |")
    return lines


def recalibration_section(s: Settings, untuned: list[int], methods: list[str]) -> list[str]:
    """Each method fitted on each run's dev split and scored on its test split: the tuning seeds' means, the method
    they choose per variant, and that choice against the targets on each untuned seed, then on their mean."""
    names = ["sft", *(v.name for v in s.variants if all(_evaluated(s, seed, v.name) for seed in s.seeds))]
    table = recalibration_table(s, names, methods)
    chosen = {name: best_method(table, name, methods) for name in names}
    n_dev = sorted(set(table[names[0], methods[0]]["n_dev"]))  # question counts: whole numbers, one per world size
    text = [f"### Recalibrated on the dev split ({READOUT_TITLES[s.confidence_readout].split(' (')[0]})", "",
            f"Each map fitted on a run's dev answers ({'/'.join(map(str, n_dev))} questions) and scored on its test answers; "
            f"tuning seeds ({', '.join(map(str, s.seeds))}), mean ± std. Δauroc: recalibrated minus raw (a step "
            "function ties confidences it merges; ties count 1/2).", "", *_recalibration_lines(table, names, methods), "",
            "Chosen on the tuning seeds (lowest recalibrated ECE among the methods whose AUROC moves by at most "
            f"{RECALIBRATION_TARGETS['auroc_change']} per seed on average): " + "; ".join(f"`{n}`: {m}" for n, m in chosen.items()) + ".",
            ""]
    for seed in untuned:
        single = replace(s, seeds=[seed])
        done = [n for n in names if _evaluated(single, seed, n)]
        seed_table = recalibration_table(single, done, methods)
        text += [f"Seed {seed}, not tuned on:", "", *_recalibration_lines(seed_table, done, methods), ""]
        for name in done:
            met = recalibration_met(seed_table[name, chosen[name]])
            text.append(f"- `{name}` with {chosen[name]}: " + "; ".join(f"{k}: {'met' if ok else '**not met**'}"
                                                                       for k, ok in met.items()))
        text.append("")
    if len(untuned) > 1:
        together = replace(s, seeds=untuned)
        done = [n for n in names if all(_evaluated(together, seed, n) for seed in untuned)]
        untuned_table = recalibration_table(together, done, [chosen[n] for n in done])
        seeds = ", ".join(map(str, untuned))
        text += [f"Seeds {seeds} together (mean over them; the method chosen on the tuning seeds):", ""]
        for name in done:
            entry = untuned_table[name, chosen[name]]
            met = recalibration_met(entry)
            text.append(f"- `{name}` with {chosen[name]}: ECE {_ms(entry['ece'])} → {_ms(entry['ece_recalibrated'])} "
                        f"(floor {_ms(entry['ece_floor_recalibrated'])}), Δauroc {_ms(entry['auroc_change'])}: "
                        + "; ".join(f"{k}: {'met' if ok else '**not met**'}" for k, ok in met.items()))
        text.append("")
    return text


def world_sentence(out: Path, seeds: list[int]) -> str:
    """The toy world the runs were trained in: its settings that differ from the default world's (the same in
    every seed's ``data/config.json`` but the seed) and its number of held-out questions."""
    defaults = asdict(ToyWorldConfig())
    changed: dict[str, object] = {}
    sizes = set()
    for seed in seeds:
        data = out / f"seed{seed}" / "data"
        if (data / "config.json").is_file():
            config = json.loads((data / "config.json").read_text())
            changed.update({k: v for k, v in config.items() if k != "seed" and defaults.get(k) != v})
        if (data / "eval" / "test.jsonl").is_file():
            sizes.add(len(read_jsonl(data / "eval" / "test.jsonl")))
    world = ("the default world" if not changed else
             "a world generated with " + ", ".join(f"`--{k} {v}`" for k, v in sorted(changed.items())))
    size = f", {'/'.join(map(str, sorted(sizes)))} held-out questions per seed" if sizes else ""
    return f"Toy world: {world}{size}."


def write_report(out: Path, seeds: list[int], untuned: list[int], variants: tuple[Variant, ...], path: Path,
                 readouts: tuple[str, ...] = ("stated",), dev_fraction: float = 0.0,
                 recalibrate: tuple[str, ...] = ()) -> Path:
    out_flag = f"--out {out} " if out != Path(DEFAULT_OUT) else ""
    untuned_flag = f"--untuned_seeds {' '.join(map(str, untuned))} " if untuned else ""
    dev_flags = f" --dev_fraction {dev_fraction:g}" if dev_fraction else ""
    dev_flags += f" --recalibrate {' '.join(recalibrate)}" if recalibrate else ""
    split = f"; every metric over the test part, {dev_fraction:.0%} held out as dev" if dev_fraction else ""
    text = ["# Calibrated, not only ordered: confidence levels against accuracy (toy world)", "",
            f"Generated by `python -m experiments.calibration_report {out_flag}--seeds {' '.join(map(str, seeds))} "
            f"{untuned_flag}--variants {' '.join(v.name for v in variants)} "
            f"--confidence_readouts {' '.join(readouts)}{dev_flags}` from the runs of `experiments/toy_ablation.py` "
            f"(300 PPO steps of 64 rollouts). Held-out countries (`toy`{split}), greedy answers, mean ± std over the "
            "tuning seeds. ECE: 10 equal-width bins; `ece if calibrated`: the ECE a model whose confidences were exact "
            "probabilities would still get on these questions (outcomes drawn from its own confidences), ECE's "
            "sampling floor. "
            "Δacc: accuracy minus SFT's / PPO α = 0's on the same seed. `auroc <level>`: AUROC "
            "inside one difficulty level; `conf <level>`: mean confidence. Parse failures: missing or malformed "
            "confidence (the same under both readouts).", "", world_sentence(out, [*seeds, *untuned]), ""]
    for readout in readouts:
        text += readout_section(out, seeds, untuned, variants, readout, dev_fraction)
        if recalibrate:
            s = Settings(out=out, seeds=seeds, ppo_steps=0, variants=variants, jobs=1, confidence_readout=readout,
                         dev_fraction=dev_fraction)
            text += recalibration_section(s, untuned, list(recalibrate))
    text += ["Variants:", "", *(f"- `{v.name}`: {v.what}" for v in variants)]
    reading = path.with_name(path.stem + "_reading.md")  # hand-written, kept across reruns
    if reading.is_file():
        text += ["", "## Reading", "", reading.read_text().strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(text) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="The harness's working folder.")
    parser.add_argument("--report", default="docs/results_calibration.md")
    parser.add_argument("--seeds", type=seed, nargs="+", default=[1, 2, 3], help="Seeds the variants were tuned on.")
    parser.add_argument("--untuned_seeds", type=seed, nargs="*", default=[], help="Seeds reported apart.")
    parser.add_argument("--variants", nargs="+", required=True, help="Variants to report; ppo_alpha0 among them.")
    parser.add_argument("--confidence_readouts", nargs="+", choices=READOUTS, default=["stated"],
                        help="A section per readout (the harness's --confidence_readout runs must exist for each).")
    parser.add_argument("--dev_fraction", type=share_below_one, default=0.0,
                        help="Read the harness's runs evaluated with this --dev_fraction (results_*_dev<F>/).")
    parser.add_argument("--recalibrate", nargs="+", choices=RECALIBRATORS[1:], default=[],
                        help="Fit each method on every run's dev split, score it on the test split, and choose one "
                             "per variant on the tuning seeds (needs --dev_fraction).")
    args = parser.parse_args(argv)
    if args.recalibrate and not args.dev_fraction:
        parser.error("--recalibrate is fitted on the dev split: give the --dev_fraction the runs were evaluated with")
    known = {v.name: v for v in VARIANTS}
    unknown = sorted(set(args.variants) - set(known))
    if unknown or "ppo_alpha0" not in args.variants:
        parser.error(f"--variants: unknown {unknown}" if unknown else "--variants must include ppo_alpha0")
    report = write_report(Path(args.out), args.seeds, args.untuned_seeds,
                          tuple(known[n] for n in args.variants), Path(args.report), tuple(args.confidence_readouts),
                          args.dev_fraction, tuple(args.recalibrate))
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
