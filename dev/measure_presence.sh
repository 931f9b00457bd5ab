#!/bin/bash
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
# The presence measurements of tools/BENCHMARKS.md, section "Presence" (issues 18 and 28): the
# quick start's model of the code before issue 28 (BASE: no presence ability) against the quick
# start's model of this code (PRES: absent-target episodes, a presence head, a calibration in its
# checkpoint). From the repository root:
#
#   git worktree add /tmp/before b33315d && (cd /tmp/before && python tools/quickstart.py \
#       --output $PWD/output/qs_base)                                  # or any such BASE run
#   python tools/quickstart.py --output output/quickstart              # PRES
#   bash dev/measure_presence.sh [BASE_DIR] [PRES_DIR] [OUT]           # EPISODES=100
#
# 1. tools/calibrate_presence.py on PRES (the quick start's own calibration, seed 0, EPISODES
#    training-class episodes: chosen on one half, reported on the other) with the held-out report
#    on synthetic_fss_test;
# 2. FSS on the held-out classes, EPISODES protocol episodes + as many absent-target ones
#    (TEST.FSS.NEGATIVE_RATIO 1, seeded): BASE with the code before (BEFORE_COMMIT, git archive)
#    and with this code (same per-episode counts = same masks), BASE's signals, PRES without a
#    decision (the FSS protocol) and with its calibrated threshold asked for;
# 3. FSIS AP on the synthetic instance tree of tests/test_fsod_inference.py: BASE (code before),
#    PRES with its default decision, PRES without one, and PRES with TEST.FSOD.CLASS_SCORE presence;
# 4. VOS J&F on the leave-and-return videos (tests/_presence_video.py): BASE (code before), PRES
#    with its default decision and without one;
# 5. tools/autolabel.py on synthetic held-out images (dev/presence_autolabel.py): BASE and PRES
#    (default decision): segm AP against the truth and annotations per image.
# Every number is printed at the end (and in OUT/summary.md).
set -euo pipefail
BASE=$(realpath "${1:-output/qs_base}")
PRES=$(realpath "${2:-output/quickstart}")
O=$(realpath -m "${3:-output/presence}")
N=${EPISODES:-100}
BEFORE_COMMIT=${BEFORE_COMMIT:-b33315d}
M=$(pwd)
CFG=$M/configs/quick_schedules/diffews_tiny_synthetic_cpu.yaml
FCFG=$M/configs/fsod/coco/diffews_sd21_fsod_coco_1shot.yaml
VCFG=$M/configs/vos/Base-DAVIS17.yaml
RUN="MODEL.DEVICE cpu INPUT.IMAGE_SIZE 64 DATALOADER.NUM_WORKERS 0"
B_W="MODEL.DIFFEWS.PRETRAINED $BASE/tiny_sd MODEL.WEIGHTS $BASE/train/model_final.pth $RUN"
P_W="MODEL.DIFFEWS.PRETRAINED $PRES/tiny_sd MODEL.WEIGHTS $PRES/train/model_final.pth $RUN"
mkdir -p "$O"
B=$O/before_code
if [ ! -d "$B" ]; then mkdir -p "$B" && git archive "$BEFORE_COMMIT" | tar -x -C "$B"; fi
log() { echo "[measure_presence] $*" >&2; }
quiet() { "$@" > "$O/last.log" 2>&1 || { tail -20 "$O/last.log"; exit 1; }; }
before() { (cd "$B" && PYTHONPATH="$B" quiet "$@"); }

log "1. calibration report of PRES ($N episodes, training classes; held-out report)"
python tools/calibrate_presence.py --config-file "$CFG" --output "$O/calibration" --episodes "$N" \
    --held-out synthetic_fss_test $P_W 2> "$O/calibration.log" | tee "$O/calibration.txt"
ASK=$(python -c "import torch; c = torch.load('$PRES/train/model_final.pth', weights_only=False)\
['presence']; print('MODEL.DIFFEWS.PRESENCE_SIGNAL', c['signal'], 'MODEL.DIFFEWS.PRESENCE_THRESHOLD', \
c['threshold'])")
log "   the checkpoint's calibration: $ASK"

log "2. FSS ($N held-out episodes + $N absent-target)"
FSS="--config-file $CFG --benchmark synthetic --num-episodes $N"
before python inference_fss/run_fss.py $FSS --output "$O/fss_base_before" $B_W
quiet python inference_fss/run_fss.py $FSS --output "$O/fss_base" $B_W
quiet python inference_fss/run_fss.py $FSS --output "$O/fss_base_neg" $B_W TEST.FSS.NEGATIVE_RATIO 1.0
quiet python inference_fss/run_fss.py $FSS --output "$O/fss_pres_neg" $P_W TEST.FSS.NEGATIVE_RATIO 1.0
quiet python inference_fss/run_fss.py $FSS --output "$O/fss_pres_neg_decided" $P_W \
    TEST.FSS.NEGATIVE_RATIO 1.0 $ASK

log "3. FSIS on the synthetic instance tree"
[ -d "$O/fsod_tree" ] || python -c "import sys; sys.path.insert(0, 'tests'); \
from _fsod_trees import write_fsod_tree; write_fsod_tree('$O/fsod_tree', shots=(1,), seeds=(0,))"
FS="--config-file $FCFG --test coco --shot 1 --seed 0 --dataset-root $O/fsod_tree"
before python inference_fsod/run_fsod.py $FS --output "$O/fsis_base_before" $B_W \
    TEST.FSOD.BATCH_SIZE 20 TEST.FSOD.SUPPORT_DIR "$O/fsod_supports_base"
quiet python inference_fsod/run_fsod.py $FS --output "$O/fsis_pres" $P_W TEST.FSOD.BATCH_SIZE 20 \
    TEST.FSOD.SUPPORT_DIR "$O/fsod_supports_pres"
quiet python inference_fsod/run_fsod.py $FS --output "$O/fsis_pres_nodecision" $P_W \
    TEST.FSOD.BATCH_SIZE 20 TEST.FSOD.SUPPORT_DIR "$O/fsod_supports_pres" \
    MODEL.DIFFEWS.PRESENCE_FROM_WEIGHTS False
quiet python inference_fsod/run_fsod.py $FS --output "$O/fsis_pres_classscore" $P_W \
    TEST.FSOD.BATCH_SIZE 20 TEST.FSOD.SUPPORT_DIR "$O/fsod_supports_pres" \
    TEST.FSOD.CLASS_SCORE presence

log "4. VOS on leave-and-return videos"
[ -d "$O/vos_tree" ] || python -c "import sys; sys.path.insert(0, 'tests'); \
from _presence_video import write_leave_and_return_tree; \
write_leave_and_return_tree('$O/vos_tree', num_videos=${VOS_VIDEOS:-4})"
VS="--config-file $VCFG --dataset davis17_val --dataset-root $O/vos_tree"
before python inference_vos/run_vos.py $VS --output "$O/vos_base_before" $B_W
quiet python inference_vos/run_vos.py $VS --output "$O/vos_pres" $P_W
quiet python inference_vos/run_vos.py $VS --output "$O/vos_pres_nodecision" $P_W \
    MODEL.DIFFEWS.PRESENCE_FROM_WEIGHTS False

log "5. autolabel on synthetic held-out images"
python dev/presence_autolabel.py "$O/autolabel_base" --sd "$BASE/tiny_sd" \
    --weights "$BASE/train/model_final.pth" > "$O/autolabel_base.txt" 2>&1
python dev/presence_autolabel.py "$O/autolabel_pres" --sd "$PRES/tiny_sd" \
    --weights "$PRES/train/model_final.pth" > "$O/autolabel_pres.txt" 2>&1

python - "$O" <<'PY' | tee "$O/summary.md"
import csv, glob, json, os, sys
o = sys.argv[1]
def fss(name):
    return json.load(open(glob.glob(f"{o}/{name}/**/fss_results.json", recursive=True)[0]))
keys = ("mIoU-present", "presence-AUROC", "absent-empty", "present-empty")
print("| FSS run | mIoU | FB-IoU | episodes | " + " | ".join(keys) + " |")
print("|---" * (4 + len(keys)) + "|")
for name in ("fss_base_before", "fss_base", "fss_base_neg", "fss_pres_neg", "fss_pres_neg_decided"):
    m = fss(name)["metrics"]
    g = lambda k: f"{m[k]:.1f}" if k in m else "-"
    print(f"| {name} | {m['mIoU']:.2f} | {m['FB-IoU']:.2f} | {m['num_episodes']} | "
          + " | ".join(g(k) for k in keys) + " |")
a, b = fss("fss_base_before")["episodes"], fss("fss_base")["episodes"]
print(f"\nper-episode counts, BASE before vs this code: {'identical' if a == b else 'DIFFERENT'} "
      f"({len(a)} episodes)\n")
print("| FSIS run | bbox AP | segm AP |")
print("|---|---|---|")
for p in sorted(glob.glob(f"{o}/fsis_*/results.json")):
    r = json.load(open(p))
    print(f"| {os.path.basename(os.path.dirname(p))} | {r['bbox']['AP']:.2f} | {r['segm']['AP']:.2f} |")
print("\n| VOS run | J&F | J | F |")
print("|---|---|---|---|")
for name in ("vos_base_before", "vos_pres", "vos_pres_nodecision"):
    row = next(csv.DictReader(open(f"{o}/{name}/global_results-val.csv")))
    print(f"| {name} | {float(row['J&F-Mean']):.3f} | {float(row['J-Mean']):.3f} | {float(row['F-Mean']):.3f} |")
print()
for name in ("autolabel_base", "autolabel_pres"):
    line = [x for x in open(f"{o}/{name}.txt") if x.startswith("autolabel segm")][-1]
    print(f"{name}: {line.strip()}")
PY
