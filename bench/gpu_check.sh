#!/usr/bin/env bash
# The first run on a CUDA GPU, in one command: on one H100/H200-class GPU it is planned to finish in about 8 minutes
# from a bare machine (a fresh checkout, the machine's own CUDA build of torch; not yet run on a GPU), writing one JSON.
#
#   bash bench/gpu_check.sh                  # in the repository root, on a machine with one CUDA GPU
#   bash bench/gpu_check.sh --wheels DIR     # offline: the project's dependencies from wheels in DIR
#   bash bench/gpu_check.sh --cpu            # dry run: every step that needs no CUDA, on CPU at tiny sizes
#   PYTHON=/opt/venv/bin/python bash bench/gpu_check.sh    # an interpreter other than python3
#
# Steps, each timed and logged; one failing does not stop the next:
#   install     only where a dependency is missing: pip install --no-build-isolation -e '.[test]' from PyPI, which
#               keeps the machine's CUDA torch (it satisfies torch>=2.4); --wheels DIR: every wheel in DIR, no index
#   cuda_tests  pytest -m cuda tests/test_cuda.py: the trainer, the sampler and FID on cuda, bf16, torch.compile
#   throughput  bench/train_step.py: DDPM++ CIFAR-10 at batch 512 (BATCH=N another; a variant out of memory is reported),
#               fp32, bf16 and bf16 + compile: img/s, FLOPs per image (torch.utils.flop_counter), MFU against
#               the chip's dense bf16 peak
#   train       a 2-minute CIFAR-sized run (dataset: synthetic, ddpmpp-cifar, batch 512) whose train_loss must fall
#   ray_trial   one 1-GPU Ray Train trial through the study path: study/run.py with resources.gpus_per_worker=1
# --cpu runs the same steps on CPU at tiny sizes (the 8x8 digits-tiny network; digits for the run that must learn),
# without compiling, which takes minutes on 2 cores (--cpu-compile adds it).
# Writes bench/results/gpu_check.json (--cpu: gpu_check_cpu.json; --out FILE elsewhere); exit 0 when all passed.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CPU=0 CPU_COMPILE=0 WHEELS="" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) CPU=1 ;;
        --cpu-compile) CPU=1 CPU_COMPILE=1 ;;
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
RESULT=${OUT:-bench/results/gpu_check$([ "$CPU" = 1 ] && echo _cpu).json}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset RAY_ADDRESS  # the study starts its own local Ray on this machine

if [ "$CPU" = 1 ]; then
    DEVICE=cpu GPUS=0 TRAIN_KIMG=${TRAIN_KIMG:-1}
    VARIANTS=p0:fp32,p0:bf16$([ "$CPU_COMPILE" = 1 ] && echo ,p0:bf16+compile)
    BENCH_ARGS=(--case study-trial --batch "${BATCH:-16}" --quick --flops --threads 2)
    TRAIN_ARGS=(--set dataset=digits --set model.preset=digits-tiny --set train.batch_size=32 --set runtime.threads=2)
else
    DEVICE=cuda GPUS=1 TRAIN_KIMG=${TRAIN_KIMG:-}
    VARIANTS=p0:fp32,p0:bf16,p0:bf16+compile
    BENCH_ARGS=(--case ddpmpp-cifar --batch "${BATCH:-512}" --rounds 3 --min-seconds 3)
    TRAIN_ARGS=(--set dataset=synthetic --set model.preset=ddpmpp-cifar --set "train.batch_size=${BATCH:-512}")
fi

step() {  # step NAME COMMAND...: run it, log to $WORK/NAME.log, record its exit status and seconds
    local name=$1 start rc
    shift
    echo "== $name"
    start=$(date +%s.%N)
    "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    echo "$name $rc $(awk -v start="$start" -v end="$(date +%s.%N)" 'BEGIN { print end - start }')" >>"$WORK/steps"
    tail -n 12 "$WORK/$name.log"
    echo "== $name: exit $rc"
}

install() {
    if "$PYTHON" -c "import torch, ray.train, ray.tune, optuna, mlflow, pydantic, pytest, trainables.loop" 2>/dev/null; then
        echo "dependencies present; nothing installed"
    elif [ -n "$WHEELS" ]; then  # whatever wheels DIR holds; the project itself runs from here (PYTHONPATH)
        "$PYTHON" -m pip install --no-index --no-deps "$WHEELS"/*.whl
    else
        "$PYTHON" -m pip install --no-build-isolation -e ".[test]"
    fi
    "$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
}

throughput() {
    "$PYTHON" bench/train_step.py --device "$DEVICE" --edm none --variants "$VARIANTS" "${BENCH_ARGS[@]}" \
        --json "$WORK/throughput.json"
}

train() {  # TRAIN_KIMG, or what the measured bf16 rate covers in 2 minutes; an eval after one batch, then at the end
    local kimg=$TRAIN_KIMG
    [ -n "$kimg" ] || kimg=$("$PYTHON" - "$WORK/throughput.json" <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["results"][0]["rows"]
    img_s = next(r["img_s"] for r in rows if r["precision"] == "bf16")
except (OSError, KeyError, IndexError, StopIteration):
    img_s = 1000.0
print(f"{max(1.0, img_s * 120 / 1000):.1f}")
EOF
)
    echo "training $kimg kimg"
    "$PYTHON" -m trainables.train --output "$WORK/train" --set "train.total_kimg=$kimg" \
        --set train.lr_rampup_kimg=0.5 --set "eval.at_kimg=[0.001]" --set eval.fid=false --set eval.loss_images=128 \
        --set eval.num_samples=16 --set eval.grid_images=16 --set "runtime.device=$DEVICE" "${TRAIN_ARGS[@]}" || return 1
    "$PYTHON" - "$WORK/train/metrics.jsonl" <<'EOF'
import json, sys
points = [json.loads(line) for line in open(sys.argv[1])]
first, last = points[0]["train_loss"], points[-1]["train_loss"]
print(f"train_loss {first:.4f} at {points[0]['kimg']} kimg -> {last:.4f} at {points[-1]['kimg']} kimg")
sys.exit(0 if last < first else 1)
EOF
}

ray_trial() {
    "$PYTHON" study/run.py --output "$WORK/study" --set name=gpu-check --set "regimes=[1.0]" \
        --set search.trials_per_regime=1 --set search.metric=test_loss --set scheduler.kind=none --set confirm.seeds=0 \
        --set resources.num_workers=1 --set resources.cpus_per_worker=1 --set "resources.gpus_per_worker=$GPUS" \
        --set trial.train.total_kimg=1 --set trial.eval.schedule=every --set trial.eval.every_kimg=0.5 \
        --set trial.eval.fid_at=final --set trial.eval.num_samples=64 --set "trial.runtime.device=$DEVICE" || return 1
    "$PYTHON" - "$WORK/study/results.parquet" <<'EOF'
import sys
import pandas as pd
table = pd.read_parquet(sys.argv[1])
print(table[["phase", "status", "kimg", "img_per_sec", "fid", "test_loss"]].to_string())
sys.exit(0 if len(table) and (table["status"] == "completed").all() else 1)
EOF
}

step install install
step cuda_tests "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
step throughput throughput
step train train
step ray_trial ray_trial

"$PYTHON" - "$WORK" "$RESULT" "$CPU" <<'EOF'
import json, platform, sys
from pathlib import Path
import torch

work, result, cpu = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
steps = {}
for line in (work / "steps").read_text().splitlines():
    name, rc, seconds = line.split()
    steps[name] = {"passed": rc == "0", "exit": int(rc), "seconds": round(float(seconds), 1),
                   "log_tail": (work / f"{name}.log").read_text()[-3000:]}
throughput = json.loads((work / "throughput.json").read_text()) if (work / "throughput.json").exists() else None
train = [json.loads(line) for line in open(work / "train" / "metrics.jsonl")] if (work / "train" / "metrics.jsonl").exists() else []
report = dict(
    mode="cpu dry run" if cpu else "cuda", python=platform.python_version(), torch=torch.__version__,
    device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine(),
    passed=all(s["passed"] for s in steps.values()), total_seconds=round(sum(s["seconds"] for s in steps.values()), 1),
    steps=steps, throughput=throughput,
    train_curve=[{k: p.get(k) for k in ("kimg", "train_loss", "test_loss", "img_per_sec")} for p in train],
)
result.parent.mkdir(parents=True, exist_ok=True)
result.write_text(json.dumps(report, indent=2) + "\n")
print(f"{'step':<12} {'passed':<7} {'seconds':>8}")
for name, s in steps.items():
    print(f"{name:<12} {str(s['passed']):<7} {s['seconds']:>8}")
for row in (throughput or {}).get("results", [{}])[0].get("rows", []):
    mfu = f"{row['mfu']:.1%}" if row.get("mfu") else "-"
    print(f"throughput {row['name']:<20} {row['img_s']:>9.1f} img/s  {row.get('tflop_s', 0):>7.2f} TFLOP/s  MFU {mfu}")
print(f"wrote {result}; {'all steps passed' if report['passed'] else 'FAILED'} in {report['total_seconds']} s")
sys.exit(0 if report["passed"] else 1)
EOF
status=$?
echo "full logs: $WORK"
exit $status
