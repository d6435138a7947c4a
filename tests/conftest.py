"""Test set-up: 8 simulated CPU devices, so every test can exercise sharding.

The tests' programs are tiny, so most of their time is XLA compilation; LLVM
optimization level 0 halves it without changing what is computed.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in flags:
    flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = flags.strip()
