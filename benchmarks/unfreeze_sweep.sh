#!/usr/bin/env bash
# The unfreeze sweep of issue 8, run on a lent GPU: stage 4 of the cached-trunk recipe
# (models/MODEL_CARD.md) again from the shipped clipsearch-base, with 6 augmented views per image and
# 1, 2, 3 or 4 image stages unlocked. Each run is the CPU recipe's own command with --device set.
#
#   benchmarks/unfreeze_sweep.sh DATA_DIR BASE_MODEL_DIR WORK_DIR RESULTS_DIR [SECONDS] [DEVICE]
#
# DATA_DIR holds captions.csv (filepath,caption,split) and the images it names; BASE_MODEL_DIR is
# the model to start from (models/weights/clipsearch-base); SECONDS bounds the whole sweep (runs
# that would start with under 80 s left are skipped, each run is cut at its share). RESULTS_DIR gets
# results.tar (each run's metrics.jsonl and log tail, sweep.json: a summary) and the best run's
# exported model as 15 MB pieces (best.tar.part-*), few files for a device's return limits.
#
# On this workplace's device machine (64 MiB a call, no package index): `python
# benchmarks/device_bundle.py ../shared/data/flickr8k models/weights/clipsearch-base .dev`, then one
# call per piece carrying .dev/pK (`cp .dev/pK/* /tmp/parts/`), the last one also unpacking it
# (`cat /tmp/parts/* | tar -x -C /tmp/dev`) and running, with .dev/lm carried,
#   PYTHONPATH=.dev/lm:/tmp/dev/site:$PWD benchmarks/unfreeze_sweep.sh /tmp/dev/data /tmp/dev/base \
#       /tmp/sw $OUT 400
# Caching 7 views of 6,000 photos took 60-80 s a run there (16 decode processes), an epoch 3-7 s.
set -uo pipefail
DATA=$1 BASE=$2 WORK=$3 RES=$4 BUDGET=${5:-480} DEVICE=${6:-cuda}
UNLOCKS=${UNLOCKS:-"1 2 3 4"} VIEWS=${VIEWS:-6} EPOCHS=${EPOCHS:-6}
BATCH=${BATCH:-512} KEYWORDS=${KEYWORDS:-128} WORKERS=${WORKERS:-$(($(nproc) - 1))}
mkdir -p "$WORK/res" "$RES"
LOG=$WORK/res/sweep.log
start=$(date +%s)
n_runs=$(wc -w <<<"$UNLOCKS")
for n in $UNLOCKS; do
    left=$((BUDGET - ($(date +%s) - start)))
    if ((left < 80)); then
        echo "skip unlock $n: ${left}s left" | tee -a "$LOG"
        continue
    fi
    share=$((left / n_runs))
    ((share < 80)) && share=80
    n_runs=$((n_runs - 1))
    echo "unlock $n: up to ${share}s" | tee -a "$LOG"
    timeout "$share" python3 -c "from models.cli import app; app()" train \
        --data "$DATA/captions.csv" --split train --val-data "$DATA/captions.csv" --val-split val \
        --image-root "$DATA" --out "$WORK/u$n" --model clipsearch-base --pretrained "$BASE" \
        --cached-trunks --image-views "$VIEWS" --unlock-image-stages "$n" --unlock-text-layers 4 \
        --trunk-lr-scale 0.2 --keyword-texts "$KEYWORDS" --epochs "$EPOCHS" --batch-size "$BATCH" \
        --lr 1e-4 --warmup-steps 10 --weight-decay 0.1 --workers "$WORKERS" --precision fp32 \
        --cache-dir "$WORK/cache" --device "$DEVICE" >"$WORK/u$n.log" 2>&1
    echo "unlock $n: exit $? after $(($(date +%s) - start))s" | tee -a "$LOG"
    grep -E "caches ready|Error|error" "$WORK/u$n.log" | tail -3 | tee -a "$LOG"
    [[ -f $WORK/u$n/metrics.jsonl ]] && cp "$WORK/u$n/metrics.jsonl" "$WORK/res/u$n.metrics.jsonl"
    tail -40 "$WORK/u$n.log" >"$WORK/res/u$n.log.tail"
done
python3 - "$WORK/res" <<'EOF'
import json, sys
from pathlib import Path
res = Path(sys.argv[1])
rows = []
for m in sorted(res.glob("u*.metrics.jsonl")):
    for line in m.read_text().splitlines():
        e = json.loads(line)
        t, i = e["val"]["text_to_image"], e["val"]["image_to_text"]
        kw = e["val"].get("keywords", {}).get("P@10")
        rows.append({"run": m.name.split(".")[0], "epoch": e["epoch"], "score": e.get("score"),
                     "t2i": [t["R@1"], t["R@5"], t["R@10"]], "i2t": [i["R@1"], i["R@5"], i["R@10"]],
                     "kw_p10": kw})
        print(rows[-1])
scored = [r for r in rows if r["score"] is not None]
best = max(scored, key=lambda r: r["score"]) if scored else None
(res / "sweep.json").write_text(json.dumps({"rows": rows, "best": best}, indent=1))
print("best", best)
if best:
    (res / "best_run").write_text(best["run"])
EOF
tar -C "$WORK/res" -cf "$RES/results.tar" .
if [[ -f $WORK/res/best_run ]]; then
    run=$(cat "$WORK/res/best_run")
    tar -C "$WORK/$run" -cf "$WORK/best.tar" best
    split -b 15M -d "$WORK/best.tar" "$RES/best.tar.part-"
fi
ls -la "$RES"
