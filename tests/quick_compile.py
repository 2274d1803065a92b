"""XLA's quick compile for the processes tests start, where the programs' speed is not the point.

No backend optimisation, no expensive LLVM passes: compiling, not running, dominates a few steps
of a narrow net on a CPU. XLA reads XLA_FLAGS when JAX starts, so this is for subprocesses.
Only for runs compared with runs compiled alike, or with a tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping

QUICK_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def quick_compile_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with QUICK_XLA added to its XLA_FLAGS."""
    return {**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} {QUICK_XLA}".strip()}
