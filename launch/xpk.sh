#!/usr/bin/env bash
# Submits launch.train as a GKE TPU workload with xpk (one container per TPU VM host).
#
#   launch/xpk.sh [--dry_run] CLUSTER TPU_TYPE IMAGE CONFIG WORKDIR [--config.a.b=v ...]
#
#   launch/xpk.sh my-cluster v5litepod-16 us-docker.pkg.dev/my-proj/rl/rl_lm:latest \
#       configs/grpo_math.py /gcs/my-bucket/runs/math \
#       --config.mesh.fsdp=16 --config.init.hf_dir=/gcs/my-bucket/models/Llama-3.2-1B
#
# IMAGE holds the repository (at REPO_DIR, default /app) and its environment.
# Every host runs the same command; jax finds the others from the variables
# GKE sets (RL_LM_DISTRIBUTED=auto, see rl_lm/parallel/distributed.py).
# WORKDIR must be an absolute path all hosts share, e.g. the bucket mounted by
# the GCS FUSE CSI driver: launch.train takes filesystem paths, not gs://.
#
# Environment: WORKLOAD (the workload name, default rl-lm-<basename of WORKDIR>),
# NUM_SLICES (default 1), ZONE, PROJECT, PYTHON (default python3). DRY_RUN=1 or
# --dry_run prints the command, quoted for a shell, and runs nothing.
set -euo pipefail

usage() {
  echo "usage: $0 [--dry_run] CLUSTER TPU_TYPE IMAGE CONFIG WORKDIR [--config.a.b=v ...]" >&2
  exit 2
}

dry_run="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry_run" ]]; then
  dry_run=1
  shift
fi
[[ $# -ge 5 ]] || usage
cluster="$1" tpu_type="$2" image="$3" config="$4" workdir="$5"
shift 5
if [[ "$workdir" == gs://* || "$workdir" != /* ]]; then
  echo "WORKDIR=$workdir must be an absolute path every host shares (mount gs:// buckets" \
    "with GCS FUSE and pass the mount path)." >&2
  exit 2
fi
# Kubernetes names: lower case letters, digits and dashes.
base="$(basename "$workdir" | tr '[:upper:]_.' '[:lower:]--' | tr -cd 'a-z0-9-')"
workload="${WORKLOAD:-rl-lm-$base}"

container="cd ${REPO_DIR:-/app} && RL_LM_DISTRIBUTED=auto ${PYTHON:-python3} -m launch.train"
for arg in "--config=$config" "--workdir=$workdir" "$@"; do
  container+=" $(printf '%q' "$arg")"
done
cmd=(xpk workload create "--cluster=$cluster" "--workload=$workload" "--tpu-type=$tpu_type"
  "--num-slices=${NUM_SLICES:-1}" "--docker-image=$image" "--command=$container")
if [[ -n "${ZONE:-}" ]]; then
  cmd+=("--zone=$ZONE")
fi
if [[ -n "${PROJECT:-}" ]]; then
  cmd+=("--project=$PROJECT")
fi

if [[ "$dry_run" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
