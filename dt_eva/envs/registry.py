"""Names of the 50 Meta-World v3 tasks and the MT40 / CW10 splits.

Kept as plain tuples (checked against `metaworld.env_dict` in the tests) so resolving a name
does not import mujoco.
"""

from __future__ import annotations

from typing import Iterable

EPISODE_LENGTH = 200
STATE_DIM = 39
ACT_DIM = 4

#: All 50 tasks, in `metaworld.env_dict.ALL_V3_ENVIRONMENTS` order.
MT50: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3",
    "door-lock-v3", "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3",
    "drawer-open-v3", "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3",
    "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3",
    "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3",
    "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3", "stick-push-v3", "stick-pull-v3",
    "push-v3", "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3", "shelf-place-v3",
    "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)  # fmt: skip

#: The 10 fine-tuning tasks in Continual World order.
CW10: tuple[str, ...] = (
    "hammer-v3", "push-wall-v3", "faucet-close-v3", "push-back-v3", "stick-pull-v3",
    "handle-press-side-v3", "push-v3", "shelf-place-v3", "window-close-v3", "peg-unplug-side-v3",
)  # fmt: skip

#: The 40 pre-training tasks: MT50 without CW10, in MT50 order.
MT40: tuple[str, ...] = tuple(t for t in MT50 if t not in CW10)

TASK_SETS: dict[str, tuple[str, ...]] = {"mt50": MT50, "mt40": MT40, "cw10": CW10}

_SUFFIX = "-v3"


def short_name(task: str) -> str:
    """`hammer-v3` -> `hammer`."""
    return resolve_task(task)[: -len(_SUFFIX)]


def resolve_task(name: str) -> str:
    """Return the full v3 name (`hammer-v3`) for `hammer` or `hammer-v3`.

    Raises `ValueError` listing the valid names for anything else.
    """
    if not isinstance(name, str):
        raise ValueError(f"a task name must be a string, got {type(name).__name__}: {name!r}")
    key = name.strip().lower()
    full = key if key.endswith(_SUFFIX) else key + _SUFFIX
    if full in MT50:
        return full
    valid = ", ".join(t[: -len(_SUFFIX)] for t in MT50)
    hint = " (Meta-World v2 names are not available: use the -v3 name)" if key.endswith("-v2") else ""
    raise ValueError(
        f"unknown Meta-World task {name!r}{hint}. Valid tasks (short name, or with '-v3'): {valid}; "
        f"or a set: {', '.join(TASK_SETS)}"
    )


def resolve_tasks(spec: str | Iterable[str]) -> list[str]:
    """Resolve `"mt40"`, `"cw10"`, `"mt50"`, a comma list (`"hammer,push-v3"`) or a list of names.

    Sets may be mixed into a list (`"cw10,reach"`); duplicates are dropped, order is kept.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        key = item.strip().lower() if isinstance(item, str) else item
        if key == "":
            continue
        names = TASK_SETS[key] if key in TASK_SETS else (resolve_task(key),)
        out.extend(t for t in names if t not in out)
    if not out:
        raise ValueError(f"no tasks given in {spec!r}: use mt40, cw10, mt50 or a comma list of task names")
    return out
