"""Meta-World v3: task registry (MT50 / MT40 / CW10), env factory, vector envs.

The registry imports nothing heavy; gymnasium and metaworld load with the factory.
"""

from dt_eva.envs.factory import filter_third_party_warnings, fix_goal, make_env, make_vector_env
from dt_eva.envs.registry import (
    ACT_DIM,
    CW10,
    EPISODE_LENGTH,
    MT40,
    MT50,
    STATE_DIM,
    TASK_SETS,
    resolve_task,
    resolve_tasks,
    short_name,
)

__all__ = [
    "ACT_DIM",
    "CW10",
    "EPISODE_LENGTH",
    "MT40",
    "MT50",
    "STATE_DIM",
    "TASK_SETS",
    "filter_third_party_warnings",
    "fix_goal",
    "make_env",
    "make_vector_env",
    "resolve_task",
    "resolve_tasks",
    "short_name",
]
