"""The lab: discovers training algorithms with JAX."""

import os as _os

__version__ = "0.1.0"

# PPO under vmap could stop forever at 0% CPU (jax 0.10, CPU): its batched QRs (orthogonal
# init) wait on XLA's intra-op thread pool from inside it, and two at once fill the pool. The
# cause is fixed where it lives (``lab.kinds.drift.ppo.orthogonal``: one matrix per call); this
# flag, the earlier workaround, stays as a second guard until dropping it is measured. It only
# touches the CPU backend and must be set before JAX starts one, hence here.
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
