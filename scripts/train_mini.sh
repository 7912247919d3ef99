#!/usr/bin/env bash
# The background training runs of the plan in docs/mini_clip.md, started or resumed; each
# outlives the shell that started it. ROLE is `proposal` (runs/prop128: the 2-head proposal
# model) or `classifier` (runs/cls96j: the shipped classifier, continued: its fourth stage).
#
#   scripts/train_mini.sh ROLE               start it, or resume it from OUT/checkpoint
#   scripts/train_mini.sh ROLE --status      its last logged step, validations and best
#   scripts/train_mini.sh ROLE --foreground  the same in the foreground (e.g. one GPU job:
#       DEVICE=cuda WORKERS=8 MINUTES=8 scripts/train_mini.sh proposal --foreground)
#
# On the CPU: 1 torch thread and 1 data worker process (the other core stays with whoever
# shares the machine), float32. A checkpoint every CHECKPOINT_MINUTES (5 proposal, 10
# classifier), each scored on training seeds (proposal: oracle-query mIoU; classifier:
# prompted top-1), the best kept in OUT/best; `kill PID` (PID in OUT/pid) stops the run after
# its current step with a checkpoint. NICE=10 runs it at a lower priority (beside a test run).
# The curve: OUT/train.log (losses every 50 steps) and OUT/val.jsonl (validations). A fresh
# proposal start widens cliprnn/assets/mini_clip/proposal to 2 heads (runs/w128init) first.
set -euo pipefail
cd "$(dirname "$0")/.."
ROLE="${1:-}"
shift || true
case "$ROLE" in
proposal)
    OUT="${OUT:-runs/prop128}"
    INIT="${INIT:-runs/w128init}"
    RUN=(--seed 11 --steps 15000 --lr 5e-4 --hires-every 2 --val-seeds 998000:998048)
    CHECKPOINT_MINUTES="${CHECKPOINT_MINUTES:-5}"
    ;;
classifier)
    OUT="${OUT:-runs/cls96j}"
    INIT="${INIT:-cliprnn/assets/mini_clip/classifier}"
    RUN=(--role classifier --seed 29 --steps 5000 --lr 2e-4 --val-seeds 998000:998256)
    CHECKPOINT_MINUTES="${CHECKPOINT_MINUTES:-10}"
    ;;
*)
    echo "usage: scripts/train_mini.sh proposal|classifier [--status|--foreground]" >&2
    exit 2
    ;;
esac
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if [ "${1:-}" = --status ]; then
    { grep -E '^step' "$OUT/train.log" || true; } | tail -1 | cut -c1-160
    tail -3 "$OUT/val.jsonl" 2>/dev/null | cut -c1-120 || true
    echo "best: $({ grep -E '"step"|"score"' "$OUT/best/val.json" 2>/dev/null || true; } | tr -d '\n ')"
    if [ -f "$OUT/pid" ] && kill -0 "$(cat "$OUT/pid")" 2>/dev/null; then
        echo "running: PID $(cat "$OUT/pid")"
    else
        echo "not running"
    fi
    exit 0
fi
if [ -f "$OUT/pid" ] && kill -0 "$(cat "$OUT/pid")" 2>/dev/null; then
    echo "already running: PID $(cat "$OUT/pid") ($OUT/train.log)" >&2
    exit 1
fi

RUN+=(--out "$OUT" --device "${DEVICE:-cpu}" --workers "${WORKERS:-1}" --threads "${THREADS:-1}"
    --minutes "${MINUTES:-100000}" --checkpoint-minutes "$CHECKPOINT_MINUTES")
if [ -f "$OUT/checkpoint/train_state.pt" ]; then
    RUN+=(--init "$OUT/checkpoint" --resume)
else
    if [ "$ROLE" = proposal ] && [ ! -f "$INIT/model.safetensors" ]; then
        "$PY" -m cliprnn.dev.mini_clip.model widen cliprnn/assets/mini_clip/proposal "$INIT" \
            --width 128 --noise 0.1
    fi
    RUN+=(--init "$INIT")
fi
mkdir -p "$OUT"
if [ "${1:-}" = --foreground ]; then
    echo $$ >"$OUT/pid"
    exec "$PY" -m cliprnn.dev.mini_clip.train "${RUN[@]}"
fi
setsid nohup nice -n "${NICE:-0}" "$PY" -m cliprnn.dev.mini_clip.train "${RUN[@]}" >>"$OUT/stdout.txt" 2>&1 </dev/null &
echo $! >"$OUT/pid"
# setsid gives the run its own scheduler autogroup, where its nice value alone does not yield
# to other sessions' jobs: the group's own nice value does.
if [ "${NICE:-0}" != 0 ]; then echo "$NICE" >"/proc/$!/autogroup" 2>/dev/null || true; fi
echo "started PID $! ($OUT/train.log): $PY -m cliprnn.dev.mini_clip.train ${RUN[*]}"
