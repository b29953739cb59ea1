#!/usr/bin/env bash
# One time-boxed slice of the GPU Kaplan study (sweeps/kaplan_gpu.yaml), for machines that are
# lent for minutes at a time and come back fresh: train for SECONDS, then pack every run record
# (summary.json, metrics.parquet, positions.parquet, configs and logs, not checkpoints) into
# OUT/kaplan_gpu.tar. Unpack it into the checkout and bring runs/kaplan_gpu to the next slice:
# finished runs are skipped there, unfinished ones start again.
#
#   sweeps/kaplan_gpu_slice.sh SECONDS OUT [override ...]
#   e.g. sweeps/kaplan_gpu_slice.sh 500 "$OUT" hydra.launcher.n_jobs=1
set -uo pipefail
seconds=$1
out=$2
shift 2
python=${PYTHON:-python3}
# timeout signals the launcher's whole process group, so its runs stop with it.
timeout --kill-after=15 "$seconds" "$python" -c "from scaling.cli import train; train()" \
  --config-dir sweeps --config-name kaplan_gpu hydra/launcher=local "$@"
echo "slice ended with status $? after at most ${seconds}s"
mkdir -p "$out"
tar --exclude=checkpoints --exclude=.lock -cf "$out/kaplan_gpu.tar" runs/kaplan_gpu
"$python" - <<'PY'
import json, pathlib
runs = [json.loads(p.read_text()) for p in pathlib.Path("runs/kaplan_gpu").glob("*/summary.json")]
done = sum(r.get("status") == "completed" for r in runs)
print(f"runs/kaplan_gpu: {done} completed of {len(runs)} started")
PY
