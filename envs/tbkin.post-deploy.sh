#!/usr/bin/env bash
# Snakemake runs this inside the freshly created conda env, from its working
# directory (the repository root): install the tbkin package without touching the
# pinned dependencies the env file already installed.
set -euo pipefail
python -m pip install --no-deps -e .
