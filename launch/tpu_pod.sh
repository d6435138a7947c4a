#!/usr/bin/env bash
# Runs launch.train on every worker of a Cloud TPU VM (a pod slice) at once, over gcloud ssh.
#
#   launch/tpu_pod.sh [--dry_run] TPU_NAME ZONE CONFIG WORKDIR [--config.a.b=v ...]
#
#   launch/tpu_pod.sh my-v5e-16 us-west4-a configs/grpo_math.py /gcs/my-bucket/runs/math \
#       --config.mesh.fsdp=16 --config.init.hf_dir=/gcs/my-bucket/models/Llama-3.2-1B
#
# Every worker runs the same command; jax finds the other workers itself
# (RL_LM_DISTRIBUTED=auto, see rl_lm/parallel/distributed.py). WORKDIR must be
# an absolute path that all workers share (a gcsfuse mount of a bucket, or
# Filestore): every worker writes its part of each checkpoint there, and
# restarting the same command resumes. launch.train takes filesystem paths, so
# mount gs://BUCKET (e.g. at /gcs/BUCKET) rather than passing gs:// itself.
#
# Environment: REPO_DIR (the checkout on each worker, default ~/rl_lm), PYTHON
# (default python3), PROJECT (gcloud --project). DRY_RUN=1 or --dry_run prints
# the command, quoted for a shell, and runs nothing.
set -euo pipefail

usage() {
  echo "usage: $0 [--dry_run] TPU_NAME ZONE CONFIG WORKDIR [--config.a.b=v ...]" >&2
  exit 2
}

dry_run="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry_run" ]]; then
  dry_run=1
  shift
fi
[[ $# -ge 4 ]] || usage
name="$1" zone="$2" config="$3" workdir="$4"
shift 4
if [[ "$workdir" == gs://* || "$workdir" != /* ]]; then
  echo "WORKDIR=$workdir must be an absolute path every worker shares (mount gs:// buckets" \
    "with gcsfuse, e.g. at /gcs/BUCKET, and pass that path)." >&2
  exit 2
fi

# The command each worker runs, every argument quoted for the remote shell.
remote="cd ${REPO_DIR:-~/rl_lm} && RL_LM_DISTRIBUTED=auto ${PYTHON:-python3} -m launch.train"
for arg in "--config=$config" "--workdir=$workdir" "$@"; do
  remote+=" $(printf '%q' "$arg")"
done
cmd=(gcloud compute tpus tpu-vm ssh "$name" "--zone=$zone" --worker=all "--command=$remote")
if [[ -n "${PROJECT:-}" ]]; then
  cmd+=("--project=$PROJECT")
fi

if [[ "$dry_run" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
