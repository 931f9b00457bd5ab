#!/bin/bash
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
# The presence measurements of tools/BENCHMARKS.md, section "Presence" (issue 18), on the quick
# start's trained tiny model. From the repository root, after `python tools/quickstart.py`:
#
#   bash dev/measure_presence.sh [WEIGHTS] [OUT]     # EPISODES=200 by default
#
# 1. tools/calibrate_presence.py on the training classes (--held-out synthetic_fss_test: the
#    three signals' AUROC on the held-out classes), its threshold used below;
# 2. FSS on the synthetic benchmark's held-out classes: the code before issue 18 (BEFORE_COMMIT,
#    extracted with git archive) and this one with the options off (same per-episode counts =
#    same masks), then TEST.FSS.NEGATIVE_RATIO 1 without and with the calibrated threshold;
# 3. FSIS AP on the synthetic instance tree of tests/test_fsod_inference.py, before and after,
#    per TEST.FSOD.CLASS_SCORE, and with the threshold;
# 4. VOS J&F on synthetic videos where an object leaves the frame and comes back
#    (tests/_presence_video.py), before and after, without and with the threshold.
# Every number is printed at the end (and in OUT/summary.md).
set -euo pipefail
W=$(realpath "${1:-output/quickstart/train/model_final.pth}")
O=$(realpath -m "${2:-output/presence}")
N=${EPISODES:-200}  # calibration and FSS episodes; VOS_VIDEOS=4 videos
BEFORE_COMMIT=${BEFORE_COMMIT:-8f09f41}
M=$(pwd)
SD=$M/output/quickstart/tiny_sd
CFG=$M/configs/quick_schedules/diffews_tiny_synthetic_cpu.yaml
FCFG=$M/configs/fsod/coco/diffews_sd21_fsod_coco_1shot.yaml
VCFG=$M/configs/vos/Base-DAVIS17.yaml
COMMON="MODEL.DIFFEWS.PRETRAINED $SD MODEL.WEIGHTS $W MODEL.DEVICE cpu INPUT.IMAGE_SIZE 64 DATALOADER.NUM_WORKERS 0"
mkdir -p "$O"
B=$O/before_code
if [ ! -d "$B" ]; then mkdir -p "$B" && git archive "$BEFORE_COMMIT" | tar -x -C "$B"; fi
log() { echo "[measure_presence] $*" >&2; }
quiet() { "$@" > "$O/last.log" 2>&1 || { tail -20 "$O/last.log"; exit 1; }; }

log "1. calibration ($N episodes, training classes; held-out report)"
python tools/calibrate_presence.py --config-file "$CFG" --output "$O/calibration" --episodes "$N" \
    --held-out synthetic_fss_test $COMMON 2> "$O/calibration.log" | tee "$O/calibration.txt"
PRES=$(python -c "import json; r = json.load(open('$O/calibration/presence_calibration.json')); \
c = r['chosen']; print('MODEL.DIFFEWS.PRESENCE_SIGNAL', c, 'MODEL.DIFFEWS.PRESENCE_THRESHOLD', \
r['signals'][c]['threshold'])")

log "2. FSS ($N held-out episodes)"
(cd "$B" && PYTHONPATH="$B" quiet python inference_fss/run_fss.py --config-file "$CFG" \
    --benchmark synthetic --num-episodes "$N" --output "$O/fss_before" $COMMON)
quiet python inference_fss/run_fss.py --config-file "$CFG" --benchmark synthetic --num-episodes "$N" \
    --output "$O/fss_off" $COMMON
quiet python inference_fss/run_fss.py --config-file "$CFG" --benchmark synthetic --num-episodes "$N" \
    --output "$O/fss_neg" $COMMON TEST.FSS.NEGATIVE_RATIO 1.0
quiet python inference_fss/run_fss.py --config-file "$CFG" --benchmark synthetic --num-episodes "$N" \
    --output "$O/fss_neg_pres" $COMMON TEST.FSS.NEGATIVE_RATIO 1.0 $PRES

log "3. FSIS on the synthetic instance tree"
[ -d "$O/fsod_tree" ] || python -c "import sys; sys.path.insert(0, '.'); \
from tests._fsod_trees import write_fsod_tree; write_fsod_tree('$O/fsod_tree', shots=(1,), seeds=(0,))"
FS="TEST.FSOD.BATCH_SIZE 20 TEST.FSOD.SUPPORT_DIR $O/fsod_supports"
for cs in none contrast; do
  (cd "$B" && PYTHONPATH="$B" quiet python inference_fsod/run_fsod.py --config-file "$FCFG" --test coco \
      --shot 1 --seed 0 --root "$O/fsod_tree" --output "$O/fsis_before_$cs" $COMMON \
      TEST.FSOD.BATCH_SIZE 20 TEST.FSOD.CLASS_SCORE $cs)
done
for cs in none contrast presence "contrast*presence"; do
  quiet python inference_fsod/run_fsod.py --config-file "$FCFG" --test coco --shot 1 --seed 0 \
      --dataset-root "$O/fsod_tree" --output "$O/fsis_after_${cs/\*/x}" $COMMON $FS TEST.FSOD.CLASS_SCORE "$cs"
  quiet python inference_fsod/run_fsod.py --config-file "$FCFG" --test coco --shot 1 --seed 0 \
      --dataset-root "$O/fsod_tree" --output "$O/fsis_pres_${cs/\*/x}" $COMMON $FS TEST.FSOD.CLASS_SCORE "$cs" $PRES
done

log "4. VOS on leave-and-return videos"
[ -d "$O/vos_tree" ] || python -c "import sys; sys.path.insert(0, '.'); \
from tests._presence_video import write_leave_and_return_tree; write_leave_and_return_tree('$O/vos_tree', num_videos=${VOS_VIDEOS:-4})"
(cd "$B" && PYTHONPATH="$B" quiet python inference_vos/run_vos.py --config-file "$VCFG" \
    --dataset davis17_val --root "$O/vos_tree" --output "$O/vos_before" $COMMON)
quiet python inference_vos/run_vos.py --config-file "$VCFG" --dataset davis17_val \
    --dataset-root "$O/vos_tree" --output "$O/vos_off" $COMMON
quiet python inference_vos/run_vos.py --config-file "$VCFG" --dataset davis17_val \
    --dataset-root "$O/vos_tree" --output "$O/vos_pres" $COMMON $PRES

python - "$O" <<'PY' | tee "$O/summary.md"
import csv, glob, json, os, sys
o = sys.argv[1]
def fss(name):
    return json.load(open(glob.glob(f"{o}/{name}/**/fss_results.json", recursive=True)[0]))
print("| FSS run | mIoU | FB-IoU | episodes | mIoU-present | AUROC | precision | recall |")
print("|---|---|---|---|---|---|---|---|")
for name in ("fss_before", "fss_off", "fss_neg", "fss_neg_pres"):
    m = fss(name)["metrics"]
    g = lambda k: f"{m[k]:.1f}" if k in m else "-"
    print(f"| {name} | {m['mIoU']:.2f} | {m['FB-IoU']:.2f} | {m['num_episodes']} | "
          f"{g('mIoU-present')} | {g('presence-AUROC')} | {g('presence-precision')} | {g('presence-recall')} |")
a, b = fss("fss_before")["episodes"], fss("fss_off")["episodes"]
print(f"\nper-episode counts before vs options off: {'identical' if a == b else 'DIFFERENT'} "
      f"({len(a)} episodes)\n")
print("| FSIS run | bbox AP | segm AP |")
print("|---|---|---|")
for p in sorted(glob.glob(f"{o}/fsis_*/results.json")):
    r = json.load(open(p))
    print(f"| {os.path.basename(os.path.dirname(p))} | {r['bbox']['AP']:.2f} | {r['segm']['AP']:.2f} |")
print("\n| VOS run | J&F | J | F |")
print("|---|---|---|---|")
for name in ("vos_before", "vos_off", "vos_pres"):
    row = next(csv.DictReader(open(f"{o}/{name}/global_results-val.csv")))
    print(f"| {name} | {float(row['J&F-Mean']):.3f} | {float(row['J-Mean']):.3f} | {float(row['F-Mean']):.3f} |")
PY
