import os

# Tests run on the CPU; keep XLA from grabbing every core for its own thread pools twice over.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
