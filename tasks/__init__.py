"""Inner problems for the lab: task families, the task registry and the suites.

Usage::

    from tasks import get_task, get_suite, suite_version
    task = get_task("digits_mlp")
    params = task.init(key)
    loss = task.loss(params, task.batch(key, step))

Families: ``quadratic``, ``rosenbrock``, ``teacher_student``, ``digits``, ``mnist1d``,
``charlm``. Supervised suites: ``smoke``, ``train``, ``heldout``; RL suites (gymnax
environments trained by PPO, ``tasks.rl``): ``rl-smoke``, ``rl-train``, ``rl-heldout``.
"""

from .base import Task
from .suites import (
    SUITES,
    TASKS,
    TASKS_CODE_VERSION,
    domain_of,
    get_suite,
    get_task,
    is_rl_suite,
    suite_version,
    suites_of,
    task_rows,
    task_version,
    tasks_version,
)

__all__ = [
    "SUITES",
    "TASKS",
    "TASKS_CODE_VERSION",
    "Task",
    "domain_of",
    "get_suite",
    "get_task",
    "is_rl_suite",
    "suite_version",
    "suites_of",
    "task_rows",
    "task_version",
    "tasks_version",
]
