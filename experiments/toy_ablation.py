"""CONQORD on the toy world with seeds and ablations; writes ``docs/results.md``.

    bash experiments/toy_ablation.sh [--quick] [--seeds 1 2 3] [--ppo_steps 300] [--out runs/toy_ablation]
                                     [--world_flags=--no-name_length_cue]

For every seed: generate the toy world, run step 1 (SFT) and step 2 (reward model), then step 3 once
per variant below (same SFT/reward model, same PPO seed), then step 4 on every checkpoint (the SFT
model also with the vanilla, Top-k and CoT prompts). Finally, means ± std over seeds, bootstrap
intervals, confidence by difficulty, reliability diagrams and training curves go into the report.
Each step is the real ``run_stepN.sh`` of the toy preset; finished runs are skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.smollm2_report import real_model_section
from step4_evaluation.confidence_readout import READOUTS
from step4_evaluation.plots import save_figure
from step4_evaluation.recalibration import RECALIBRATORS
from utils.args import Parser, seed, share_below_one

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "runs/toy_ablation"  # the harness's working folder (checkpoints, logs, results)


@dataclass(frozen=True)
class Variant:
    name: str
    flags: tuple[str, ...]
    what: str
    nproc: int = 1


# The setting the study found best (R_A as the confidence tokens' advantage, α = 32); the ablations
# below change one thing each against it.
BEST = ("--alpha", "32", "--alignment_on_confidence_tokens")
BRIER = ("--confidence_scoring_rule", "brier", "--confidence_scoring_weight", "8")
WORST = ("--missing_confidence_policy", "worst")
CENTER = ("--center_confidence_terms",)
PTX = ("--unsupervised_dataset_name", "{data}/step1_sft", "--unsup_coef", "1")  # {data}: the seed's world


def ptx_brier(weight: int, *extra: str) -> tuple[str, ...]:
    """The calibrated form's flags: R_A on the confidence tokens (α = 32), centred, a missing confidence at its
    worst, Brier at ``weight``, PPO-ptx; ``extra`` appended."""
    return (*BEST, *CENTER, *WORST, "--confidence_scoring_rule", "brier", "--confidence_scoring_weight", str(weight),
            *PTX, *extra)


VARIANTS = (
    Variant("ppo_alpha0", ("--alpha", "0"), "plain RLHF (α = 0), same budget"),
    Variant("conqord_a2", ("--alpha", "2"), "CONQORD as in the paper (α·R_A in the sequence reward), α = 2, R_A / N"),
    Variant("conqord_a4", ("--alpha", "4"), "the same, α = 4"),
    Variant("conqord_a8", ("--alpha", "8"), "the same, α = 8"),
    Variant("conqord_a16", ("--alpha", "16"), "the same, α = 16"),
    Variant("conqord_sum", ("--alpha", "0.5", "--align_reward_reduction", "sum"),
            "the authors' summed R_A, α = 0.5 (= the mean form at α = 32 with 64 rollouts)"),
    Variant("conf_tokens_a4", ("--alpha", "4", "--alignment_on_confidence_tokens"),
            "beyond the paper: α·R_A as the advantage of the confidence tokens only, α = 4"),
    Variant("conf_tokens_a8", ("--alpha", "8", "--alignment_on_confidence_tokens"), "the same, α = 8"),
    Variant("conf_tokens", BEST, "the same, α = 32 (best)"),
    Variant("scope_device", (*BEST, "--align_reward_scope", "device", "--per_device_generation_batch_size", "32"),
            "best, R_A per device (2 ranks × 32 rollouts; the authors')", nproc=2),
    Variant("scope_global", (*BEST, "--per_device_generation_batch_size", "32"),
            "best, R_A gathered over 2 ranks × 32 rollouts", nproc=2),
    Variant("greedy", (*BEST, "--greedy_rollouts"), "best, greedy rollouts (the authors')"),
    Variant("rm_stripped", (*BEST, "--quality_reward", "model"),
            "best, learned reward model as quality (confidence stripped before scoring)"),
    Variant("rm_kept", (*BEST, "--quality_reward", "model", "--score_with_confidence"),
            "best, learned reward model scoring the text with its confidence (the authors')"),
    Variant("brier", (*BEST, "--confidence_scoring_rule", "brier", "--confidence_scoring_weight", "8"),
            "best + Brier score of the confidence (weight 8) on the confidence tokens"),
    # Levels, not only order (issue 11): proper scoring rules that a missing confidence cannot game
    Variant("brier_worst", (*BEST, *BRIER, *WORST),
            "best + Brier (weight 8), a missing confidence scored at its worst in every term"),
    Variant("brier_a4", ("--alpha", "4", "--alignment_on_confidence_tokens", *BRIER, *WORST),
            "the same with α = 4: R_A's push to the extremes (∝ α) no longer outweighs Brier's pull to P(correct)"),
    Variant("brier_only", ("--alpha", "0", "--alignment_on_confidence_tokens", *BRIER, *WORST),
            "Brier alone (weight 8) on the confidence tokens, no R_A (RLCR's reward, confidence tokens only)"),
    Variant("log_a4", ("--alpha", "4", "--alignment_on_confidence_tokens", "--confidence_scoring_rule", "log",
                       "--confidence_scoring_weight", "2", *WORST),
            "α = 4 + log score (weight 2): unbounded at 0 and 1, so R_A cannot push levels to the extremes"),
    # the confidence terms bypass the critic: their mean over the batch as baseline, then Brier strong enough that
    # R_A's stretch of the levels (α / 2w around the batch accuracy) shrinks: 0.5 at w = 32, 0.25 at w = 64
    Variant("centered", (*BEST, *CENTER), "best, confidence terms centred over the batch (their baseline)"),
    Variant("brier_w32", (*BEST, *CENTER, *WORST, "--confidence_scoring_rule", "brier", "--confidence_scoring_weight",
                          "32"), "best, centred, + Brier (weight 32), a missing confidence scored at its worst"),
    Variant("brier_w64", (*BEST, *CENTER, *WORST, "--confidence_scoring_rule", "brier", "--confidence_scoring_weight",
                          "64"), "the same with Brier weight 64"),
    # Accuracy kept (issue 11): PPO-ptx, the SFT loss on step 1's data mixed into each actor update
    Variant("ptx_alpha0", ("--alpha", "0", *PTX), "plain RLHF + PPO-ptx (SFT loss on step 1's data, weight 1)"),
    Variant("ptx_centered", (*BEST, *CENTER, *PTX), "centered + PPO-ptx"),
    Variant("ptx_brier_w32", ptx_brier(32), "brier_w32 + PPO-ptx"),
    # the levels are learned slowly (spearman still rising at step 300): Brier's weight halved (R_A's stretch
    # 1 instead of 0.5), and two PPO epochs per rollout batch (twice the updates from the same rollouts)
    Variant("ptx_brier_w16", ptx_brier(16), "ptx_brier_w32 with Brier weight 16"),
    Variant("ptx_brier_w32_e2", ptx_brier(32, "--ppo_epochs", "2"),
            "ptx_brier_w32 with 2 PPO epochs per rollout batch"),
    Variant("ptx_brier_w16_e2", ptx_brier(16, "--ppo_epochs", "2"),
            "ptx_brier_w16 with 2 PPO epochs per rollout batch"),
    # Brier reached first settles every confidence at the base rate, leaving R_A nothing to order (seed 7):
    # its weight ramps in over the run, R_A teaches the order first
    Variant("ptx_brier_ramp32", ptx_brier(32, "--confidence_scoring_warmup_steps", "300"),
            "ptx_brier_w32 with Brier's weight ramped from 0 over the 300 steps"),
    Variant("ptx_brier_ramp64", ptx_brier(64, "--confidence_scoring_warmup_steps", "300"),
            "the same ramped to weight 64"),
    # step 1's confidences are random labels: PPO-ptx trained on them pulls every level back towards 0.5
    Variant("ptx_brier_w16_e2_mask", ptx_brier(16, "--ppo_epochs", "2", "--unsup_mask_confidence"),
            "ptx_brier_w16_e2 with PPO-ptx blind to step 1's confidence numbers"),
    Variant("ptx_brier_w32_e2_mask", ptx_brier(32, "--ppo_epochs", "2", "--unsup_mask_confidence"),
            "ptx_brier_w32_e2 with PPO-ptx blind to step 1's confidence numbers"),
    # the levels stay compressed (easy ≈ 0.6 at 95 % accuracy) even on the countries PPO trained on: too few
    # clipped updates to move the value digits, so four PPO epochs per rollout batch
    Variant("ptx_brier_w16_e4", ptx_brier(16, "--ppo_epochs", "4"), "ptx_brier_w16 with 4 PPO epochs per rollout batch"),
    Variant("ptx_brier_w32_e4", ptx_brier(32, "--ppo_epochs", "4"), "ptx_brier_w32 with 4 PPO epochs per rollout batch"),
    # the form docs/results_calibration_reading.md recommends (best ECE and AUROC over the tuning seeds, read with
    # --confidence_readout expected), so `--variants ppo_alpha0 recommended` compares it with plain PPO on any seed
    Variant("recommended", ptx_brier(32, "--ppo_epochs", "4"), "the recommended form: ptx_brier_w32_e4"),
)
SFT_METHODS = ("zero_shot", "vanilla", "topk", "cot")
METRICS = ("accuracy", "ece", "auroc", "auroc_stated", "pearson", "spearman", "brier", "parse_failure_rate")
RECALIBRATED_METRICS = ("ece_recalibrated", "auroc_recalibrated", "brier_recalibrated")


@dataclass
class Settings:
    out: Path
    seeds: list[int]
    ppo_steps: int
    variants: tuple[Variant, ...]
    jobs: int
    world_flags: tuple[str, ...] = ()
    confidence_readout: str = "stated"  # step 4's --confidence_readout
    dev_fraction: float = 0.0  # step 4's --dev_fraction: the share of each question set held out as dev
    recalibrate: str = "none"  # step 4's --recalibrate, fitted on the dev questions

    def results(self, seed: int) -> Path:
        """Step 4's folder for one seed: one per readout and dev split, so they sit side by side (a dev split
        changes which questions every metric is over; the recalibration only adds columns)."""
        name = "results" if self.confidence_readout == "stated" else f"results_{self.confidence_readout}"
        return self.out / f"seed{seed}" / (f"{name}_dev{self.dev_fraction:g}" if self.dev_fraction else name)

    def step4_flags(self) -> str:
        """The harness flags that shape step 4, as given on the command line (none at their defaults)."""
        flags = "" if self.confidence_readout == "stated" else f" --confidence_readout {self.confidence_readout}"
        flags += f" --dev_fraction {self.dev_fraction:g}" if self.dev_fraction else ""
        return flags + (f" --recalibrate {self.recalibrate}" if self.recalibrate != "none" else "")

    def split_sentence(self) -> str:
        if not self.dev_fraction:
            return ""
        recalibrated = (f"; `*_recalibrated`: the confidence mapped by {self.recalibrate} regression fitted on the dev "
                        "part's confidences and outcomes" if self.recalibrate != "none" else "")
        return (f"; {self.dev_fraction:.0%} of each set held out as dev (a seeded split, the same for every row), every "
                f"metric over the rest{recalibrated}")

    def metrics(self) -> tuple[str, ...]:
        return (*METRICS, *RECALIBRATED_METRICS) if self.recalibrate != "none" else METRICS


def _env(seed_dir: Path, nproc: int = 1) -> dict[str, str]:
    return {**os.environ, "CONQORD_PRESET": "toy", "CONQORD_NPROC": str(nproc),
            "CONQORD_TOY_DATA": str(seed_dir / "data"), "CONQORD_TOY_BASE": str(seed_dir / "base"),
            "CONQORD_TOY_OUT": str(seed_dir / "out"), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
            "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with log.open("w") as handle:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({code}); see {log}")
    print(f"  {log.stem}: {time.time() - start:.0f}s", flush=True)


def prepare_seed(seed: int, s: Settings) -> Path:
    """World, SFT and reward model of one seed (skipped when already there)."""
    seed_dir = s.out / f"seed{seed}"
    env = _env(seed_dir)
    if not (seed_dir / "out/step2/config.json").is_file():
        _run([sys.executable, "datasets/generate_toy_world.py", "--seed", str(seed), "--out_dir", str(seed_dir / "data"),
              "--model_dir", str(seed_dir / "base"), *s.world_flags], env, seed_dir / "logs/world.log")
        _run(["bash", "step1_supervised_finetuning_LM/run_step1.sh", "--seed", str(seed)],
             env, seed_dir / "logs/step1.log")
        _run(["bash", "step2_reward_model/run_step2.sh", "--seed", str(seed)],
             env, seed_dir / "logs/step2.log")
    return seed_dir


def train_variant(seed_dir: Path, seed: int, variant: Variant, s: Settings) -> None:
    out = seed_dir / "out" / variant.name
    if (out / "actor/config.json").is_file():
        return
    flags = [flag.format(data=seed_dir / "data") for flag in variant.flags]
    _run(["bash", "step3_RL_finetune_LLM/run_step3.sh", "--seed", str(seed), "--max_steps", str(s.ppo_steps),
          "--save_interval", "0", *flags, "--output_dir", str(out)],
         _env(seed_dir, variant.nproc), seed_dir / f"logs/step3_{variant.name}.log")


def evaluate_seed(seed_dir: Path, seed: int, s: Settings) -> None:
    env = _env(seed_dir)
    # the dev flags always: they override the preset's defaults (run_step4.sh), so 0 / none means none here
    common = ["--output_dir", str(s.results(seed)), "--seed", str(seed), "--bootstrap", "200",
              "--confidence_readout", s.confidence_readout, "--dev_fraction", str(s.dev_fraction),
              "--recalibrate", s.recalibrate]
    logs = seed_dir / "logs" / s.results(seed).name.removeprefix("results").lstrip("_")
    sft = ["--checkpoints", f"sft={seed_dir / 'out/step1'}", "--methods", *SFT_METHODS]
    _run(["bash", "step4_evaluation/run_step4.sh", *sft, *common], env, logs / "step4_sft.log")
    actors = [f"{v.name}={seed_dir / 'out' / v.name / 'actor'}" for v in s.variants]
    _run(["bash", "step4_evaluation/run_step4.sh", "--checkpoints", *actors, *common], env, logs / "step4_ppo.log")


def run_all(s: Settings) -> None:
    for seed in s.seeds:
        print(f"seed {seed}", flush=True)
        seed_dir = prepare_seed(seed, s)
        single = [v for v in s.variants if v.nproc == 1]
        with ThreadPoolExecutor(max_workers=s.jobs) as pool:  # one core per single-process run
            list(pool.map(lambda v: train_variant(seed_dir, seed, v, s), single))
        for variant in (v for v in s.variants if v.nproc > 1):
            train_variant(seed_dir, seed, variant, s)
        evaluate_seed(seed_dir, seed, s)


# ---------------------------------------------------------------- aggregation and report

def _summary(results: Path, checkpoint: str, benchmark: str, method: str) -> dict:
    return json.loads((results / checkpoint / benchmark / method / "summary.json").read_text())


def _value(x) -> float:
    return float("nan") if x is None else float(x)


def aggregate(s: Settings) -> dict[str, dict]:
    """Per row (benchmark × checkpoint × method): mean and std over seeds of every metric, per-difficulty
    views, CIs. The SFT model's other prompts are reported on the held-out questions only."""
    rows = [("toy", "sft", m) for m in SFT_METHODS] + [("toy", v.name, "zero_shot") for v in s.variants]
    rows += [("toy/seen", c, "zero_shot") for c in ["sft", *(v.name for v in s.variants)]]
    table = {}
    for benchmark, checkpoint, method in rows:
        per_seed = [_summary(s.results(seed), checkpoint, benchmark, method) for seed in s.seeds]
        entry = {m: [_value(p.get(m)) for p in per_seed] for m in s.metrics()}
        levels = sorted({lvl for p in per_seed for lvl in p.get("by_difficulty", {})})
        for lvl in levels:
            for key in ("accuracy", "mean_confidence", "auroc"):
                entry[f"{key}_{lvl}"] = [_value(p["by_difficulty"].get(lvl, {}).get(key)) for p in per_seed]
        entry["ci_auroc"] = [p.get("ci", {}).get("auroc") for p in per_seed]
        table[f"{benchmark}: {checkpoint}/{method}"] = entry
    return table


def _ms(values: list[float]) -> str:
    """Mean ± std over the seeds where the metric is defined; "(k/n)" when only k of n seeds are."""
    v = np.asarray(values, dtype=float)
    defined = v[~np.isnan(v)]
    if defined.size == 0:
        return "n/a"
    text = f"{defined.mean():.3f} ± {defined.std():.3f}" if defined.size > 1 else f"{defined.mean():.3f}"
    return text if defined.size == v.size else f"{text} ({defined.size}/{v.size})"


def _mean(values: list[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan")


def _mean_rank_stat(values: list[float]) -> float:
    """Mean of a rank statistic where NaN (a constant confidence: no ranking at all) counts as 0."""
    return float(np.mean(np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)))


def curves_figure(s: Settings, path: Path) -> None:
    """Quality reward, alignment reward and the share of rollouts paid to be wrong, per PPO step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    keys = ("accuracy", "alignment_reward", "spearman_quality_confidence", "wrong_way_share")
    for variant in s.variants:
        if variant.name not in ("ppo_alpha0", "conqord_a8", "conqord_sum", "brier", "conf_tokens"):
            continue
        logs = [[json.loads(line) for line in (s.out / f"seed{seed}/out" / variant.name / "train_log.jsonl")
                 .read_text().splitlines()] for seed in s.seeds]
        steps = [r["step"] for r in logs[0]]
        for ax, key in zip(axes, keys):
            series = np.array([[r.get(key, np.nan) for r in log[: len(steps)]] for log in logs], dtype=float)
            window = max(1, len(steps) // 20)
            with warnings.catch_warnings():  # a metric absent in a step (no gold answers) stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                smooth = np.convolve(np.nanmean(series, axis=0), np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, label=variant.name)  # trailing mean: no edge artefacts
    for ax, key in zip(axes, keys):
        ax.set_title(key.replace("_", " "), fontsize=9)
        ax.set_xlabel("PPO step")
    axes[0].set_ylabel("rollout batch (mean over seeds, smoothed)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _best(table: dict[str, dict], names: list[str]) -> str:
    return max(names, key=lambda n: _mean(table[f"toy: {n}/zero_shot"]["auroc"]))


def _target_lines(table: dict[str, dict], best: str, form: str) -> list[str]:
    b, a0, sft = (table[f"toy: {n}/zero_shot"] for n in (best, "ppo_alpha0", "sft"))
    lines = [f"- {form}: best α on greedy-confidence AUROC (held-out countries) is **{best}**."]
    for metric, target in (("auroc", 0.15), ("spearman", 0.3)):
        # a constant confidence has AUROC 0.5 by definition and no Spearman correlation: counted as 0
        d0 = _mean_rank_stat(b[metric]) - _mean_rank_stat(a0[metric])
        ds = _mean_rank_stat(b[metric]) - _mean_rank_stat(sft[metric])
        met = "met" if d0 >= target and ds >= target else "**not met**"
        lines.append(f"  - {metric}: {best} − PPO α=0 = {d0:+.3f}, {best} − SFT = {ds:+.3f} (target ≥ {target}: {met}).")
    dacc = _mean(b["accuracy"]) - _mean(a0["accuracy"])
    lines.append(f"  - Accuracy: {best} − PPO α=0 = {100 * dacc:+.1f} points "
                 f"(target ≥ −2: {'met' if dacc >= -0.02 else '**not met**'}).")
    return lines


def findings(table: dict[str, dict], s: Settings) -> list[str]:
    """The issue's targets, checked on the numbers (not written by hand), for each form of the reward."""
    names = [v.name for v in s.variants]
    forms = {"The paper's form (α·R_A in the sequence reward)": [n for n in names if n.startswith("conqord_a")],
             "R_A as the confidence tokens' advantage": [n for n in names if n.startswith("conf_tokens")]}
    forms = {form: grid for form, grid in forms.items() if grid}
    if not forms or "ppo_alpha0" not in names:
        return []
    lines = [line for form, grid in forms.items() for line in _target_lines(table, _best(table, grid), form)]
    a0 = table["toy: ppo_alpha0/zero_shot"]
    if "conqord_sum" in names:
        summed = table["toy: conqord_sum/zero_shot"]
        dsum = _mean(summed["accuracy"]) - _mean(a0["accuracy"])
        lines.append(f"- The authors' summed R_A (α = 0.5): accuracy {100 * dsum:+.1f} points against PPO α=0; "
                     f"AUROC {_ms(summed['auroc'])} (over stated confidences only: {_ms(summed['auroc_stated'])}; "
                     f"parse failures {_ms(summed['parse_failure_rate'])}).")
    if "brier" in names:
        best = _best(table, [n for grid in forms.values() for n in grid])
        lines.append(f"- ECE: Brier variant {_ms(table['toy: brier/zero_shot']['ece'])} vs {best} "
                     f"{_ms(table[f'toy: {best}/zero_shot']['ece'])}.")
    return lines


def write_report(s: Settings, path: Path) -> Path:
    table = aggregate(s)
    figures = path.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    curves_figure(s, figures / "training_curves.png")
    first = s.results(s.seeds[0])
    reliability = []  # only this run's diagrams: an earlier run's may still lie in the folder
    for name in ("sft", "ppo_alpha0", "conqord_sum", "conf_tokens", "brier"):
        source = first / name / "toy/zero_shot/reliability.png"
        if source.is_file():
            reliability.append(figures / f"reliability_{name}.png")
            shutil.copyfile(source, reliability[-1])
    levels = sorted({k.removeprefix("accuracy_") for e in table.values() for k in e if k.startswith("accuracy_")})
    header = ["row", *s.metrics(), *(f"auroc {lvl}" for lvl in levels), *(f"conf {lvl}" for lvl in levels)]
    lines = [
        "# CONQORD on the toy world: results",
        "",
        f"Generated by `bash experiments/toy_ablation.sh --seeds {' '.join(map(str, s.seeds))} --ppo_steps {s.ppo_steps} "
        f"--variants {' '.join(v.name for v in s.variants)}{s.step4_flags()}` ({len(s.seeds)} seed(s); {s.ppo_steps} PPO "
        "steps of 64 rollouts; greedy answers and confidences on the 300 held-out questions, whose countries PPO never "
        "saw: `toy`) and on 300 questions about countries PPO trained on (`toy/seen`)"
        f"{s.split_sentence()}. Mean ± std over seeds. ECE: 10 equal-width bins, every confidence in one bin. `auroc <level>`: "
        "AUROC of the stated confidence for correctness inside one difficulty level; `conf <level>`: mean stated "
        "confidence. Bootstrap 95% intervals per seed are in each `summary.json`.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row, entry in table.items():
        cells = [row, *(_ms(entry[m]) for m in s.metrics()), *(_ms(entry.get(f"auroc_{lvl}", [])) for lvl in levels),
                 *(_ms(entry.get(f"mean_confidence_{lvl}", [])) for lvl in levels)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Variants:", ""] + [f"- `{v.name}`: {v.what}" for v in s.variants]
    lines += ["", "## Against the targets", "", *findings(table, s), ""]
    reading = path.parent / "results_reading.md"  # the hand-written interpretation, kept across reruns
    if reading.is_file():
        lines += ["## Reading", "", reading.read_text().strip(), ""]
    real_model = path.parent / "results_smollm2.md"  # generated by experiments/smollm2_report.py, kept across reruns
    if real_model.is_file():
        lines += [*real_model_section(real_model), ""]
    lines += ["## Figures", "", "![training curves](figures/training_curves.png)", ""]
    lines += [f"![{p.stem}](figures/{p.name})" for p in reliability]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    (path.with_suffix(".json")).write_text(json.dumps(table, indent=1, default=str))
    return path


DIRECTION_VARIANT = "conf_tokens"  # the form and α that the full study found best


def check_direction(s: Settings) -> None:
    """--assert_direction: CONQORD's AUROC (mean over seeds) must exceed the α = 0 control's."""
    table = aggregate(s)
    conqord = _mean(table[f"toy: {DIRECTION_VARIANT}/zero_shot"]["auroc"])
    control = _mean(table["toy: ppo_alpha0/zero_shot"]["auroc"])
    if not conqord > control:
        raise SystemExit(f"direction check failed: AUROC {DIRECTION_VARIANT} {conqord:.3f} <= PPO α=0 {control:.3f}")
    print(f"direction check passed: AUROC {DIRECTION_VARIANT} {conqord:.3f} > PPO α=0 {control:.3f}")


QUICK_VARIANTS = ("ppo_alpha0", DIRECTION_VARIANT, "conqord_sum", "brier")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="Working folder (checkpoints, logs, results).")
    parser.add_argument("--report", default="docs/results.md")
    parser.add_argument("--seeds", type=seed, nargs="+", default=[1, 2, 3])
    parser.add_argument("--ppo_steps", type=int, default=300)
    parser.add_argument("--variants", nargs="+", default=None, help=f"Subset of {[v.name for v in VARIANTS]}.")
    parser.add_argument("--jobs", type=int, default=2, help="Single-process PPO runs in parallel (one core each).")
    parser.add_argument("--world_flags", default="",
                        help="Extra flags for datasets/generate_toy_world.py, e.g. --world_flags=--no-name_length_cue.")
    parser.add_argument("--confidence_readout", choices=READOUTS, default="stated",
                        help="Step 4's readout of the confidence (results_expected/ beside results/ for 'expected').")
    parser.add_argument("--dev_fraction", type=share_below_one, default=0.0,
                        help="Step 4's --dev_fraction (results_<readout>_dev<F>/ beside the others; 0: no dev split).")
    parser.add_argument("--recalibrate", choices=RECALIBRATORS, default="none",
                        help="Step 4's --recalibrate, fitted on the dev split (needs --dev_fraction).")
    parser.add_argument("--quick", action="store_true",
                        help=f"One seed, four variants ({', '.join(QUICK_VARIANTS)}): the effect in minutes.")
    parser.add_argument("--assert_direction", action="store_true",
                        help=f"Exit non-zero unless {DIRECTION_VARIANT} has a higher AUROC than PPO α=0.")
    args = parser.parse_args(argv)
    if args.recalibrate != "none" and not args.dev_fraction:
        parser.error(f"--recalibrate {args.recalibrate} is fitted on held-out questions: give --dev_fraction (e.g. 0.3)")
    names = args.variants or (QUICK_VARIANTS if args.quick else [v.name for v in VARIANTS])
    unknown = sorted(set(names) - {v.name for v in VARIANTS})
    if unknown:
        parser.error(f"unknown --variants {unknown}")
    settings = Settings(out=Path(args.out), seeds=args.seeds[:1] if args.quick else args.seeds,
                        ppo_steps=args.ppo_steps, variants=tuple(v for v in VARIANTS if v.name in names),
                        jobs=args.jobs, world_flags=tuple(shlex.split(args.world_flags)),
                        confidence_readout=args.confidence_readout, dev_fraction=args.dev_fraction,
                        recalibrate=args.recalibrate)
    start = time.time()
    run_all(settings)
    report = write_report(settings, Path(args.report))
    print(f"report: {report} ({time.time() - start:.0f}s)")
    print(report.read_text().split("## Against the targets")[1].split("## Figures")[0].strip())
    if args.assert_direction:
        check_direction(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
