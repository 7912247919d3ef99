#!/usr/bin/env bash
# GPU readiness in one command (about 6-9 minutes on a fresh CUDA machine):
#   1. installs what is missing (pydensecrf2; from ./.whl when that folder holds wheels, since
#      the GPU machine may have no network) and puts this checkout on PYTHONPATH;
#   2. runs the CUDA-only tests (tests/test_cuda.py, tests/test_device.py) and the pipeline
#      and text-cache tests;
#   3. runs bench-speed on CUDA in float32 (with the baseline schedule) and in float16 (VOC
#      preset, the paper's ViT-B/16 + ViT-L/14 with random weights, 20 queries, cold and warm
#      text cache), the float16 one with a 32-image throughput run with and without the CRF
#      overlap (2 CRF workers);
#   4. (before 3) trains a tiny miniature CLIP for 30 steps on the device and resumes it
#      (cliprnn.dev.mini_clip.train). Each step has a time limit; they add up to 10.5 minutes.
# stdout: one JSON line per figure ({"figure": ..., "value": ..., ...}); logs go to stderr.
#
#   scripts/gpu_check.sh            the check (needs CUDA)
#   scripts/gpu_check.sh --cpu      the same steps on the CPU with tiny models (smoke test, ~2 min)
#   scripts/gpu_check.sh --dry-run  print the steps only
#
# Wheels for a machine without network, prepared on one with it (Python 3.12 there):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl pydensecrf2==1.1
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=cuda
DRY=0
for arg in "$@"; do
    case "$arg" in
        --cpu) MODE=cpu ;;
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export CLIPRNN_CACHE_DIR=""   # the benchmark chooses its own (empty, then warm) cache folders
FAILED=0

step() {  # step NAME TIMEOUT_S COMMAND...: run with a time limit; a JSON line if it fails
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*" >&2
    [ "$DRY" = 1 ] && return 0
    local rc
    if [ "$name" = tests ]; then  # pytest's report to stderr, one JSON line with its summary
        local log
        log="$(mktemp)"
        timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log" >&2
        rc=${PIPESTATUS[0]}
        printf '{"figure": "tests", "value": "%s", "ok": %s}\n' \
            "$(grep -E '(passed|failed|error)' "$log" | tail -1 | tr -d '="')" \
            "$([ "$rc" = 0 ] && echo true || echo false)"
        rm -f "$log"
    else
        timeout --kill-after=10 "$limit" "$@"
        rc=$?
    fi
    if [ "$rc" != 0 ]; then
        FAILED=1
        printf '{"figure": "%s", "error": "exit status %s%s"}\n' "$name" "$rc" \
            "$([ "$rc" = 124 ] && echo ', timed out')"
    fi
    return 0
}

install() {
    "$PY" - <<'EOF' && return 0
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "cv2", "pydensecrf", "safetensors", "pytest")
           if importlib.util.find_spec(m) is None]
print("missing: " + " ".join(missing) if missing else "all present", file=sys.stderr)
sys.exit(1 if missing else 0)
EOF
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/cliprnn-site \
            .whl/*.whl >&2
        export PYTHONPATH="$PYTHONPATH:/tmp/cliprnn-site"
    else
        "$PY" -m pip install -q pydensecrf2 >&2
    fi
}

if [ "$DRY" = 0 ]; then
    install || { echo '{"figure": "install", "error": "dependencies missing"}'; exit 1; }
    "$PY" - "$MODE" <<'EOF' || exit 1
import json, sys, torch
ok = torch.cuda.is_available()
print(json.dumps({"figure": "cuda_available", "value": ok,
                  "device": torch.cuda.get_device_name(0) if ok else None,
                  "torch": torch.__version__}))
sys.exit(0 if ok or sys.argv[1] == "cpu" else 1)
EOF
fi

step tests 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_cuda.py tests/test_device.py tests/test_pipeline.py tests/test_text_cache.py

# bench-speed (run_speed_benchmark, what `python -m cliprnn bench-speed --json` prints), each
# figure as its own JSON line. Arguments: device, dtype, dataset images, baseline (0/1).
BENCH="$(mktemp /tmp/cliprnn-gpu-check-XXXXXX.py)"
trap 'rm -f "$BENCH"' EXIT
cat >"$BENCH" <<'EOF'
import contextlib, json, sys
from cliprnn.dev.bench.speed import PAPER_ARCHS, run_speed_benchmark

mode, dtype, images, baseline = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
tiny = dict(width=64, layers=2, patch_size=16, image_size=32)
archs = PAPER_ARCHS if mode == "cuda" else (tiny, tiny)
with contextlib.redirect_stdout(sys.stderr):  # progress bars and notices: not figures
    report = run_speed_benchmark(queries=20, steps=2, device=mode, dtype=dtype, archs=archs,
                                 dataset=images, crf_workers=2 if images else 0,
                                 baseline=baseline)
tags = {"device": mode, "dtype": dtype, "archs": report["archs"], "queries": 20}
names = ["seconds_per_image", "first_image_seconds", "first_over_steady",
         "first_image_text_seconds", "first_image_seconds_warm", "first_over_steady_warm",
         "first_image_text_seconds_warm", "warm_identical",
         "baseline_seconds_per_image", "speedup", "identical", "max_score_difference",
         "first_query_seconds", "marginal_query_seconds", "peak_rss_mb"]
for name in names:
    if name in report:
        print(json.dumps({"figure": name, "value": report[name], **tags}))
print(json.dumps({"figure": "stages", "value": report["stages"], **tags}))
data = report.get("dataset")
if data:
    for name in ("images_per_second", "overlap_images_per_second", "overlap_speedup",
                 "overlap_identical", "decode_seconds_per_image"):
        if name in data:
            print(json.dumps({"figure": f"dataset_{name}", "value": data[name],
                              "images": data["images"], "crf_workers": data["crf_workers"],
                              **tags}))
EOF

# the miniature CLIP's training loop on this device (bfloat16 autocast on CUDA, float32 on the
# CPU), 20 steps of a tiny model with 2 data workers, then a resume of its checkpoint
TRAIN_OUT="$(mktemp -d /tmp/cliprnn-gpu-train-XXXXXX)"
TINY=(--width 64 --vision-layers 1 --text-layers 1 --image-size 32 --projection-dim 32
      --batch 16 --steps 30 --log-every 10 --val-seeds none --device "$MODE" --workers 2)
step train 90 "$PY" -m cliprnn.dev.mini_clip.train "${TINY[@]}" --minutes 1 \
    --checkpoint-minutes 1000 --out "$TRAIN_OUT" --seed 0
step train_resume 60 "$PY" -m cliprnn.dev.mini_clip.train "${TINY[@]}" --minutes 1 \
    --checkpoint-minutes 1000 --out "$TRAIN_OUT" --seed 0 \
    --init "$TRAIN_OUT/checkpoint" --resume

if [ "$MODE" = cuda ]; then
    step bench_float32 150 "$PY" "$BENCH" cuda float32 0 1
    step bench_float16 180 "$PY" "$BENCH" cuda float16 32 0
else
    step bench_float32 300 "$PY" "$BENCH" cpu float32 4 1
fi
exit "$FAILED"
