"""The library the CONQORD pipeline's steps share; no module here is a command (those are in ``tools/``, the
data generators in ``worlds/``). By concern:

Data
    data.py          reading and checking ``--data_path`` files and hub sets, row by row, into canonical columns
    data_formats.py  the named source formats (rm-static, hh-rlhf, …), the hub registry, conversion
    data_split.py    DeepSpeed-Chat's per-step split of each ``--data_path`` and their blend
    collate.py       tokenising rows (SFT labels, reward pairs, prompts) and padding them into batches
    data_cache.py    tokenised data cached under ``--data_output_path``
    jsonl.py         the one strict reader and atomic writer of ``.jsonl`` files
    prompts.py       the one prompt/response format (``### Question/Answer/Confidence``)

Model
    model.py         models from HF folders (ZeRO-3 aware), scalar heads, checkpoints
    lora.py          LoRA on ``nn.Linear`` layers chosen by name, fused before saving
    generation.py    batched generation for PPO rollouts and evaluation

Training and distributed
    training.py      seeding, optimizer groups, DeepSpeed engines, loaders, logging; steps 1-2's train loop
    ds_config.py     DeepSpeed config dicts from a few flags
    ds_ops.py        DeepSpeed's JIT ops, built under a lock that dies with its holder
    dist.py          process group start and shutdown, rank-0 printing, collectives
    dry_run.py       ``--dry_run``: each engine's DeepSpeed config and ZeRO memory estimate, then stop
    finite.py        stopping a run whose loss, statistics or weights turn NaN/inf
    profiling.py     per-phase wall clock and peak accelerator memory

CONQORD's confidence and reward
    confidence.py    the one confidence parser and the stripping of the confidence span
    reward.py        the dual reward: quality plus the order-preserving alignment reward
    answer_match.py  EM / F1 answer matching (step 3's oracle quality, step 4's judges)

Command-line flags, errors and files
    args.py          every flag, defined once, and the checks of their values
    errors.py        how a command ends: exit 2 (bad input), 1 (failed run), 130 (interrupted)
    files.py         atomic writes, output folders that replace nothing unasked, their lock
"""
