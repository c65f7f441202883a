#!/usr/bin/env bash
# README.md is assembled from docs/sections/ (one file per topic); run this after editing a section.
# Lines `<!-- flags: NAME -->` become flag tables generated from the option dataclasses (docs/flag_tables.py).
set -euo pipefail
cd "$(dirname "$0")/sections"
{
  for f in 00-head.md 10-data_prep.md training.md retain.md augment.md dynamic.md evaluation.md longform.md export.md report.md hindi.md jax.md embeddings.md 60-normalisation.md scale.md benchmarks.md 90-tail.md; do
    [ -f "$f" ] || continue
    cat "$f"
    echo
  done
} | python3 ../flag_tables.py > ../../README.md.tmp
mv ../../README.md.tmp ../../README.md
