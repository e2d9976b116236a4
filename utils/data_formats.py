"""Named source formats and their conversion into our canonical columns.

Canonical columns: step 1 ``prompt`` + ``response``; step 2 ``prompt`` + ``chosen`` + ``rejected``;
step 3 ``prompt`` (+ optional ``answers``). Formats:

* ``canonical``: rows already in those columns.
* ``rm-static`` (Dahoas/rm-static, Dahoas/full-hh-rlhf, the authors' hooope/CONQORD_dataset subsets):
  ``prompt`` (ending ``"\\n\\nAssistant:"``), ``response``, ``chosen``, ``rejected``; step 1 learns
  ``response`` where a row has one, else ``chosen``.
* ``hh-rlhf`` (Anthropic/hh-rlhf and its ``data_dir`` subsets): only ``chosen`` and ``rejected``, each a
  whole dialogue ``"\\n\\nHuman: …\\n\\nAssistant: …"``. The prompt is the text up to and including the
  last ``"\\n\\nAssistant:"``, the response the rest (its leading space kept, as in rm-static). Rows that cannot be split
  (no assistant turn, chosen and rejected prompts that differ, an empty response the step needs) are
  dropped and counted in one printed line: the public data has such rows (9 of the 2,312 harmless-base
  test pairs), so refusing them would refuse the dataset.

In every format, a reward pair whose chosen and rejected replies are the same (after stripping
whitespace) teaches nothing (its loss cannot fall, its accuracy is 0): such pairs are dropped and counted
the same way. An entry none of whose rows is usable is refused with a :class:`DataError`.

A hub name picks its format from :data:`HUB_FORMATS`; anything else is recognised by its columns.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

from utils import dist
from utils.errors import UserError

CANONICAL, RM_STATIC, HH_RLHF = "canonical", "rm-static", "hh-rlhf"

# Hub repositories (``owner/name``; a longer name is a ``data_dir`` subset) and their formats.
HUB_FORMATS: dict[str, str] = {
    "Dahoas/rm-static": RM_STATIC,
    "Dahoas/full-hh-rlhf": RM_STATIC,
    "Anthropic/hh-rlhf": HH_RLHF,
    "hooope/CONQORD_dataset": RM_STATIC,
}

ASSISTANT = "\n\nAssistant:"
DROP = "_drop_reason"  # a temporary column: why a row cannot be used ("" when it can)
SAME_PAIR = "chosen and rejected are the same"


class DataError(UserError):
    """A data file or dataset the run cannot use (defined here, below :mod:`utils.data`, which re-exports it)."""


def split_hub_name(name: str) -> tuple[str, str | None]:
    """``"Anthropic/hh-rlhf/helpful-base"`` → ``("Anthropic/hh-rlhf", "helpful-base")``."""
    parts = name.strip("/").split("/")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def hub_format(name: str) -> str | None:
    """The registered format of a hub name (case-insensitive, like the hub), ``None`` when unknown."""
    repo = split_hub_name(name)[0].lower()
    return next((fmt for key, fmt in HUB_FORMATS.items() if key.lower() == repo), None)


def detect_format(columns: Iterable[str], hub_name: str | None = None) -> str:
    """The registry's format for ``hub_name``, else the one the columns show."""
    registered = hub_format(hub_name) if hub_name else None
    if registered:
        return registered
    present = set(columns)
    if {"chosen", "rejected"} <= present and "prompt" not in present:
        return HH_RLHF
    if {"prompt", "chosen"} <= present:
        return RM_STATIC
    return CANONICAL


# Which source columns a canonical column is made from (the column itself when not listed).
_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    CANONICAL: {},
    RM_STATIC: {"response": ("chosen",)},
    HH_RLHF: {"prompt": ("chosen",), "response": ("chosen",), "chosen": ("chosen",), "rejected": ("rejected",)},
}


# Source columns a format reads only where a row gives them (rm-static's ``response``, else ``chosen``).
_GIVEN_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {RM_STATIC: {"response": ("response",)}}


def source_columns(fmt: str, required: Sequence[str]) -> tuple[str, ...]:
    """The source columns every row of ``fmt`` needs to give the canonical ``required`` columns."""
    sources = _SOURCES[fmt]
    return tuple(dict.fromkeys(src for column in required for src in sources.get(column, (column,))))


def given_source_columns(fmt: str, required: Sequence[str]) -> tuple[str, ...]:
    """The source columns ``fmt`` reads for ``required`` where a row has them (they may be absent or empty)."""
    sources = _GIVEN_SOURCES.get(fmt, {})
    return tuple(dict.fromkeys(src for column in required for src in sources.get(column, ())))


def split_dialogue(text: str) -> tuple[str, str] | None:
    """An hh-rlhf dialogue as (prompt through the last ``"\\n\\nAssistant:"``, the reply after it); ``None``
    without an assistant turn. The reply keeps its leading space, as rm-static's responses and our
    `` answer`` do: prompt and reply are tokenised separately, and generation continues after the colon."""
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        return None
    cut += len(ASSISTANT)
    return text[:cut], text[cut:]


def _hh_rlhf_row(row: dict[str, Any], required: Sequence[str]) -> dict[str, str]:
    out = dict.fromkeys(("prompt", "response", "chosen", "rejected", DROP), "")
    chosen = split_dialogue(row["chosen"])
    if chosen is None:
        return {**out, DROP: "no '\\n\\nAssistant:' turn"}
    out.update(prompt=chosen[0], response=chosen[1], chosen=chosen[1])
    if "rejected" in required:  # only a pair needs the rejected dialogue, and the same prompt in both
        rejected = split_dialogue(row["rejected"])
        if rejected is None:
            return {**out, DROP: "no '\\n\\nAssistant:' turn"}
        if rejected[0] != chosen[0]:
            return {**out, DROP: "chosen and rejected prompts differ"}
        out["rejected"] = rejected[1]
    if any(not out[c].strip() for c in ("response", "chosen", "rejected") if c in required):
        out[DROP] = "empty response"
    return out


def _rm_static_row(row: dict[str, Any]) -> dict[str, str]:
    return {"response": row.get("response") or row["chosen"]}


def _same_pair(row: dict[str, Any]) -> dict[str, str]:
    """Marks a pair with identical replies, unless the row is already dropped for another reason."""
    if row.get(DROP) or row["chosen"].strip() != row["rejected"].strip():
        return {DROP: row.get(DROP, "")}
    return {DROP: SAME_PAIR}


def _drop_unusable(ds, source: str, fmt: str):
    """``ds`` without its rows marked in :data:`DROP`, counted in one printed line; refused when none is left."""
    reasons = Counter(reason for reason in ds[DROP] if reason)
    if reasons:
        counts = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common())
        if sum(reasons.values()) == len(ds):
            raise DataError(f"{source}: none of its {len(ds)} {fmt} rows is usable ({counts}); fix the rows or "
                            "remove the entry")
        dist.print_rank0(f"{source}: dropped {sum(reasons.values())} of {len(ds)} {fmt} rows ({counts})")
        ds = ds.filter(lambda reason: not reason, input_columns=DROP)
    return ds.remove_columns(DROP)


def to_canonical(ds, fmt: str, required: Sequence[str], optional: Sequence[str] = (), source: str = "data"):
    """``ds`` (rows already checked for :func:`source_columns`) in the canonical ``required`` columns, plus
    the ``optional`` ones it has, without its unusable rows; ``source`` names it in the dropped-rows line."""
    columns = list(required) + [c for c in optional if c in ds.column_names and c not in required]
    if len(ds) == 0:  # ``map`` never calls the function on no rows, so it would add no columns
        return _empty(ds, columns)
    if fmt == HH_RLHF:
        ds = ds.map(_hh_rlhf_row, fn_kwargs={"required": tuple(required)})
    elif fmt == RM_STATIC and "response" in required:
        ds = ds.map(_rm_static_row)
    if "rejected" in required:
        ds = ds.map(_same_pair)
    if DROP in ds.column_names:
        ds = _drop_unusable(ds, source, fmt)
    return ds.select_columns(columns)


def _empty(ds, columns: Sequence[str]):
    import datasets

    features = datasets.Features({c: ds.features.get(c, datasets.Value("string")) for c in columns})
    return datasets.Dataset.from_dict({c: [] for c in columns}, features=features)
