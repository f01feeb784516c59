"""The lab: discovers training algorithms with JAX."""

import os as _os

__version__ = "0.1.0"

# XLA's concurrency-optimized CPU scheduler deadlocks (0% CPU, forever) on a vmapped scan over
# PPO updates (jax 0.10, CPU): seen with 2+ updates of ``lab.kinds.drift.ppo`` under vmap. The
# flag only touches the CPU backend and must be set before JAX starts one, hence here.
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
