import os

# Tests run on the CPU. XLA compiles at -O0 with the classic fusion emitters: the test programs are
# tiny, so compile time dominates and this makes the suite several times faster. Subprocesses
# (CLI runs, simulated devices) inherit the same flags; comparisons are always between runs
# made with identical flags.
from tests.helpers import FAST_COMPILE_FLAGS

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if FAST_COMPILE_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS).strip()
