#!/usr/bin/env bash
# Runs one dlu experiment on every host of a Cloud TPU VM slice. Each host runs the same
# command; jax.distributed finds the other hosts from the TPU VM's environment.
#
#   scripts/launch_tpu_vm.sh TPU_NAME ZONE experiments/configs/ae_conv_fashion_mnist.flags \
#       gs://BUCKET/dlu/ae_conv [more flags...]
#
# The workdir must be shared by all hosts (a GCS bucket or a shared file system). Prepare the
# data once as records on storage every host reads (a shared file system, or a bucket mounted
# on each host): python -m experiments.prepare_data --dataset=... --out=/mnt/data/NAME, then
# pass --dataset=records:/mnt/data/NAME [--data_workers=N]. Each host reads only its own slice
# of every global batch (streamed when the data are too large to hold).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE FLAGFILE WORKDIR [flags...]" >&2
  exit 2
fi
tpu="$1" zone="$2" flagfile="$3" workdir="$4"
shift 4
repo="${DLU_REMOTE_DIR:-~/dlu}"
gcloud compute tpus tpu-vm ssh "${tpu}" --zone="${zone}" --worker=all --command="\
  cd ${repo} && .venv/bin/python -m experiments.train --flagfile=${flagfile} \
  --workdir=${workdir} --distributed=on $*"
