#!/usr/bin/env bash
# One command from a fresh clone to a trained model: installs dlu, prepares the data, trains
# the default experiment (the seed autoencoder on Fashion-MNIST) and says where the results are.
# Extra arguments are passed to experiments.train (e.g. --num_steps=1000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

if "${PY}" -m experiments.prepare_data --dataset=fashion_mnist; then
  config=ae_seed_fashion_mnist
else
  echo "Fashion-MNIST cannot be had on this machine: training the same model on scikit-learn's 8x8 digits instead."
  config=ae_digits
fi
workdir="${WORKDIR:-workdirs/${config}}"
"${PY}" -m experiments.train --flagfile="experiments/configs/${config}.flags" --workdir="${workdir}" "$@"
