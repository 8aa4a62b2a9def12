"""TBKIN: threshold-based knowledge integration network."""
import os

# OpenMP threads that spin while waiting make multi-threaded torch steps 10-30x
# slower whenever the cores are shared (Snakemake runs jobs side by side). This must
# be set before torch loads its OpenMP runtime, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
