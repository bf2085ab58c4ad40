#!/usr/bin/env bash
# Run by Snakemake inside the new environment: install trackgnn from the source tree, editable
# and without dependencies (the environment file pins them). TRACKGNN_SOURCE is the workflow's
# base directory (workflow/rules/common.smk sets it before the environments are built).
set -euo pipefail
python -m pip install --quiet --no-deps --no-build-isolation --editable "${TRACKGNN_SOURCE:?not set: run through snakemake}"
