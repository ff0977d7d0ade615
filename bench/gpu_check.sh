#!/usr/bin/env bash
# The first run on a CUDA GPU, in one command: on one H100/H200-class GPU it is planned to finish in about 8 minutes
# from a bare machine (a fresh checkout, the machine's own CUDA build of torch; not yet run on a GPU), writing one JSON.
#
#   bash bench/gpu_check.sh                  # in the repository root, on a machine with one CUDA GPU
#   bash bench/gpu_check.sh --bundle DIR     # where there is network: the wheels an air-gapped node lacks, into DIR
#                                            # (--python 3.12 and --glibc 2.28, the node's, are the defaults)
#   bash bench/gpu_check.sh --wheels DIR     # on that node: installs from DIR only (no index), then the check
#   bash bench/gpu_check.sh --cpu            # dry run: every step that needs no CUDA, on CPU at tiny sizes
#   bash bench/gpu_check.sh --out DIR        # the JSON and the steps' logs into DIR (default bench/results)
#   bash bench/gpu_check.sh --venv DIR       # install into a venv at DIR that sees the machine's packages (its torch)
#   PYTHON=/opt/venv/bin/python bash bench/gpu_check.sh    # an interpreter other than python3
#
# Steps, each timed and logged; one failing does not stop the next. What needs Ray comes last, so a packaging
# failure there still leaves the GPU measured:
#   install        only what is missing of what the next three steps import (numpy, scipy, pydantic, pyyaml, pillow,
#                  scikit-learn, pytest): from PyPI, or with --wheels DIR from DIR alone; torch is pinned to the
#                  machine's own build and checked unchanged after (bench/gpu_bundle.py install)
#   cuda_tests     pytest -m cuda tests/test_cuda.py: the trainer, the sampler and FID on cuda, bf16, torch.compile
#   throughput     bench/train_step.py: DDPM++ CIFAR-10 at batch 512 (BATCH=N another; a variant out of memory is
#                  reported), fp32, bf16 and bf16 + compile: img/s, FLOPs per image (torch.utils.flop_counter), MFU
#                  against the chip's dense bf16 peak
#   train          a 2-minute CIFAR-sized run (dataset: synthetic, ddpmpp-cifar, batch 512) whose train_loss must fall
#   install_study  only where Ray, Optuna, MLflow, ... are missing: the project with its dependencies, the same way
#   ray_trial      one 1-GPU Ray Train trial through the study path: study/run.py with resources.gpus_per_worker=1
# --cpu runs the same steps on CPU at tiny sizes (the 8x8 digits-tiny network; digits for the run that must learn),
# without compiling, which takes minutes on 2 cores (--cpu-compile adds it).
# Writes DIR/gpu_check.json (--cpu: gpu_check_cpu.json) and the steps' logs beside it; exit 0 when all passed.
set -uo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
here() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }  # a folder named from where we were called

PYTHON=${PYTHON:-python3}
CPU=0 CPU_COMPILE=0 WHEELS="" OUT=bench/results VENV="" BUNDLE="" BUNDLE_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) CPU=1 ;;
        --cpu-compile) CPU=1 CPU_COMPILE=1 ;;
        --wheels) WHEELS=$(here "${2:?--wheels needs a folder}"); shift ;;
        --out) OUT=$(here "${2:?--out needs a folder}"); shift ;;
        --venv) VENV=$(here "${2:?--venv needs a folder}"); shift ;;
        --bundle) BUNDLE=$(here "${2:?--bundle needs a folder}"); shift ;;
        --python|--glibc) BUNDLE_ARGS+=("$1" "${2:?$1 needs a version}"); shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -z "$BUNDLE" ] || exec "$PYTHON" bench/gpu_bundle.py build "$BUNDLE" "${BUNDLE_ARGS[@]}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
RESULT=$OUT/gpu_check$([ "$CPU" = 1 ] && echo _cpu)
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

pip_install() {  # pip_install PIP_ARGS...: torch pinned to the machine's own; with --wheels, from DIR alone
    local source=()
    [ -z "$WHEELS" ] || source=(--wheels "$WHEELS" --work "$WORK/wheels")
    "$PYTHON" bench/gpu_bundle.py install "${source[@]}" -- "$@"
}

install() {  # what cuda_tests, throughput and train import; --venv DIR first makes the venv they then run in
    if [ -n "$VENV" ]; then
        [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV" || return 1
        PYTHON=$VENV/bin/python
    fi
    if "$PYTHON" -c "import torch, numpy, scipy, pydantic, yaml, PIL, sklearn, pytest" 2>/dev/null; then
        echo "dependencies present; nothing installed"
    else
        pip_install numpy scipy pydantic pyyaml pillow scikit-learn pytest || return 1
    fi
    "$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
}

install_study() {  # the rest: Ray, Optuna, MLflow, ... (the project itself still runs from here, PYTHONPATH)
    if "$PYTHON" -c "import ray.train, ray.tune, optuna, mlflow, mlxtend, pyarrow, pandas, matplotlib" 2>/dev/null; then
        echo "dependencies present; nothing installed"
    elif [ -n "$WHEELS" ]; then
        pip_install "scoreaug-study[test]"
    else
        pip_install --no-build-isolation -e ".[test]"
    fi
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
    "$PYTHON" study/run.py --config study/configs/demo_grid.yaml --output "$WORK/study" --set name=gpu-check --set "regimes=[1.0]" \
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
step install_study install_study
step ray_trial ray_trial

"$PYTHON" - "$WORK" "$RESULT" "$CPU" <<'EOF'
import json, platform, shutil, sys
from pathlib import Path
import torch

work, stem, cpu = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
result, logs = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + "_logs")
logs.mkdir(parents=True, exist_ok=True)
steps = {}
for line in (work / "steps").read_text().splitlines():
    name, rc, seconds = line.split()
    shutil.copy(work / f"{name}.log", logs)
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
result.write_text(json.dumps(report, indent=2) + "\n")
print(f"{'step':<14} {'passed':<7} {'seconds':>8}")
for name, s in steps.items():
    print(f"{name:<14} {str(s['passed']):<7} {s['seconds']:>8}")
for row in (throughput or {}).get("results", [{}])[0].get("rows", []):
    mfu = f"{row['mfu']:.1%}" if row.get("mfu") else "-"
    print(f"throughput {row['name']:<20} {row['img_s']:>9.1f} img/s  {row.get('tflop_s', 0):>7.2f} TFLOP/s  MFU {mfu}")
verdict = "all steps passed" if report["passed"] else "FAILED"
print(f"wrote {result} (logs: {logs}); {verdict} in {report['total_seconds']} s")
sys.exit(0 if report["passed"] else 1)
EOF
status=$?
echo "full logs: $WORK"
exit $status
