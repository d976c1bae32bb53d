#!/usr/bin/env bash
# One-shot GPU check for routeray on an NVIDIA host: routing throughput per router tier on one
# GPU, then the serve load benchmark with the router on that GPU. Installs nothing.
#
#   bash bench/gpu_check.sh                 # 1,000,000 prompts per tier (< 8 min), then the
#                                           # 1M-row batch route jobs (each under 600 s)
#   bash bench/gpu_check.sh --quick         # 100,000 prompts per tier, shorter serve phases
#   bash bench/gpu_check.sh --mf DIR        # also the mf tier, from a trained MF router directory
#   bash bench/gpu_check.sh --cpu-smoke     # no GPU: the python steps on the CPU, 500 prompts
#   bash bench/gpu_check.sh --no-job        # without the 1M-row batch route job (step 4)
#
# Expects, from the repository root: .venv with a CUDA build of torch (`make gpu` builds .venv
# and adds the CUDA vllm extra, whose torch is a CUDA build; PY=/path/to/python overrides).
# Nothing here needs vLLM: the serve step routes only (`--endpoint route`, a stand-in plays
# the weak model).
#
# Steps, each under `timeout`, each allowed to fail without stopping the rest:
# 1. prompts: 20,000 generated prompts of mixed length (seed 1) into a Parquet file; every
#    tier scores the same ones, repeated up to the row count (no embedding cache, so a repeat
#    costs what a new prompt does).
# 2. one process per tier (`bench.score_speed`): minilm, fast (the default), mf (with --mf).
#    --device cuda --dtype float16: kinds with device/dtype load options take them (causal_llm:
#    dtype=float16; bert: bf16=True, its only half-precision option); kinds that embed with the
#    shared sentence-transformers model (quality_gap, mf) get it moved to the GPU and cast to
#    fp16 by the bench; a static (model2vec) embedder runs in numpy on the CPU whatever the
#    device. Batches of up to 1,024 prompts / 131,072 padded tokens, calls of 100,000 prompts.
# 3. bench.serve_load --endpoint route --router minilm --router-gpus 1: the router deployment
#    asks Ray for the GPU, so its embedder loads on cuda:0; nvidia-smi is polled meanwhile to
#    show which processes held GPU memory.
# 4. the batch route job over JOB_ROWS (1,000,000) rows, S3 to S3 (`bench.batch_route`, moto on
#    loopback): minilm with one router actor on the GPU (--num-gpus 1), then the default router
#    (numpy on every CPU core), each against the identity pipeline and bare `score` in the same
#    run, with the job's start-up apart and the peak RSS of the driver and of each actor.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
PY=${PY:-.venv/bin/python}
ROWS=1000000
UNIQUE=20000
TIER_TIMEOUT=150
SERVE_SECONDS=15
SERVE_TIMEOUT=240
MF_DIR=""
DEVICE_ARGS=(--device cuda --dtype float16 --batch-rows 1024 --batch-tokens 131072)
LOOP_ROWS=1000
SMOKE=0
JOB=1
JOB_ROWS=1000000
JOB_TIMEOUT=600

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ROWS=100000; JOB_ROWS=100000; TIER_TIMEOUT=90; SERVE_SECONDS=8; SERVE_TIMEOUT=180 ;;
    --no-job) JOB=0 ;;
    --mf) MF_DIR=${2:?--mf takes a router directory}; shift ;;
    --rows) ROWS=${2:?--rows takes a number}; shift ;;
    --cpu-smoke)
      SMOKE=1; ROWS=500; UNIQUE=500; LOOP_ROWS=50; TIER_TIMEOUT=300; JOB_ROWS=2000
      DEVICE_ARGS=(--device cpu) ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

rule() { printf '\n==== %s ====\n' "$*"; }
# run_step SECONDS LABEL COMMAND...: the command under `timeout`; a failure is reported, not fatal.
run_step() {
  local limit=$1 label=$2 started rc
  shift 2
  started=$(date +%s)
  timeout --kill-after=15 "$limit" "$@"
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "!! $label: timed out after ${limit} s"
  elif [ "$rc" -ne 0 ]; then
    echo "!! $label: failed (exit $rc)"
  fi
  echo "-- $label: $(($(date +%s) - started)) s"
  return "$rc"
}

rule "routeray GPU check"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "host:    $(hostname), $(nproc) CPUs"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader |
    sed 's/^/gpu:     /'
elif [ "$SMOKE" -eq 0 ]; then
  echo "no nvidia-smi: not an NVIDIA GPU host (bash bench/gpu_check.sh --cpu-smoke runs without one)"
  exit 2
fi
if [ ! -x "$PY" ]; then
  echo "no $PY: build the environment first (make gpu), or set PY=/path/to/python"
  exit 2
fi
"$PY" - "$SMOKE" <<'EOF' || exit 2
import sys

import torch

cuda = torch.cuda.is_available()
print(f"torch:   {torch.__version__} (CUDA {torch.version.cuda or 'none'}); "
      f"device 0: {torch.cuda.get_device_name(0) if cuda else 'none'}")
if not cuda and sys.argv[1] != "1":
    sys.exit("this torch has no CUDA: `make gpu` installs a CUDA build (or set PY=...)")
EOF
echo "rows:    $ROWS prompts per tier ($UNIQUE distinct)"

WORK=$(mktemp -d -t routeray-gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

rule "prompts"
run_step 300 prompts "$PY" -c "
from pathlib import Path
from routeray.demo.prompts import write_sample
print(write_sample(Path('$WORK'), $UNIQUE, seed=1))
" || exit 1

TIERS=(minilm fast)
[ -n "$MF_DIR" ] && TIERS+=("$MF_DIR")
for tier in "${TIERS[@]}"; do
  name=$tier
  [ "$tier" = "$MF_DIR" ] && name=mf
  rule "tier $name: $ROWS prompts"
  if [ "$tier" != "$MF_DIR" ] && ! "$PY" -c "import sys; from routers import SHIPPED; sys.exit('$tier' not in SHIPPED)"; then
    echo "no shipped router named '$tier' in this checkout: skipped"
    continue
  fi
  run_step "$TIER_TIMEOUT" "tier $name" "$PY" -m bench.score_speed --router "$tier" \
    --prompts "$WORK/prompts.parquet" --rows "$ROWS" "${DEVICE_ARGS[@]}" \
    --call-size 100000 --loop-rows "$LOOP_ROWS" --no-mf --json "$WORK/tier-$name.json"
done

rule "serve load: --endpoint route --router minilm, router on the GPU"
if [ "$SMOKE" -eq 1 ]; then
  echo "skipped in --cpu-smoke"
else
  (
    # Which processes hold GPU memory while the serve bench runs (the router replica should).
    while sleep 5; do
      nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null
    done
  ) >"$WORK/gpu-apps.txt" &
  poller=$!
  run_step "$SERVE_TIMEOUT" "serve load" "$PY" -m bench.serve_load --endpoint route \
    --router minilm --router-gpus 1 --seconds "$SERVE_SECONDS" || true
  kill "$poller" 2>/dev/null
  wait "$poller" 2>/dev/null
  if [ -s "$WORK/gpu-apps.txt" ]; then
    echo "processes seen on the GPU during the serve step (most memory each):"
    awk -F', ' '{ m = $3 + 0; if (!($1 in most) || m > most[$1]) { most[$1] = m; app[$1] = $2 } }
      END { for (p in most) printf "  pid %s %s: %d MiB\n", p, app[p], most[p] }' "$WORK/gpu-apps.txt"
  else
    echo "no process held GPU memory during the serve step: the router ran on the CPU"
  fi
fi

rule "batch route job: $JOB_ROWS rows, S3 to S3"
if [ "$JOB" -eq 0 ]; then
  echo "skipped (--no-job)"
else
  GPUS=1
  [ "$SMOKE" -eq 1 ] && GPUS=0
  # minilm's actors on the GPU: one actor per GPU share (batch_jobs.route.actor_layout).
  run_step "$JOB_TIMEOUT" "batch route minilm" "$PY" -m bench.batch_route --router minilm \
    --rows "$JOB_ROWS" --row-group-rows 5000 --num-gpus "$GPUS" --memory
  # The default router is numpy on the CPU: one single-threaded actor per core.
  run_step "$JOB_TIMEOUT" "batch route default" "$PY" -m bench.batch_route --router default \
    --rows "$JOB_ROWS" --row-group-rows 5000 --memory
fi

rule "summary: routing throughput per tier"
"$PY" - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

rows = sorted(Path(sys.argv[1]).glob("tier-*.json"))
if not rows:
    print("no tier finished")
print(f"{'tier':<8} {'router':<28} {'prompts':>9} {'prompts/s':>11} {'load s':>7} "
      f"{'GPU MiB':>8} {'RSS MiB':>8}  embedder")
for path in rows:
    for r in json.loads(path.read_text()):
        gpu = r.get("peak_gpu_mib")
        print(f"{path.stem.removeprefix('tier-'):<8} {r['router'][-28:]:<28} {r['rows']:>9} "
              f"{r['prompts_per_s']:>11.1f} {r['load_s']:>7.1f} "
              f"{'-' if gpu is None else f'{gpu:.0f}':>8} {r['peak_rss_mib']:>8.0f}  "
              f"{r['embedder']}")
EOF
echo "done: $(date -u '+%H:%M:%S UTC')"
