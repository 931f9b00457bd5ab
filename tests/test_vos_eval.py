# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The DAVIS J&F scorer against numbers counted by hand from the davis2017-evaluation rules.

Small frames keep the counting doable: in a 6x6 or 10x10 frame the F tolerance is
ceil(0.008 * diagonal) = 1 px, so the dilation disk is the 3x3 cross. Every expected number below
is derived in the comments from the definitions (boundary map, disk, bins), not from our code.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from diffews.evaluation.davis_metrics import (
    boundary_tolerance, db_eval_iou, db_statistics, disk, f_measure, seg2bmap, VOSEvaluationError
)
from diffews.evaluation.vos_evaluation import evaluate_davis, VOSEvaluator
from diffews.evaluation.davis_report import format_davis_tables, write_davis_csvs
from tests._vos_trees import (
    block, scene_sequences, write_davis_sequence, write_davis_tree, write_list, write_results,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "inference_vos"))
import eval_davis  # noqa: E402

S = block((6, 6), (2, 3), (2, 3)).astype(bool)  # the 2x2 square used throughout


def test_disk_by_hand():
    # x^2 + y^2 <= r^2 on the (2r+1)^2 grid
    assert disk(0).tolist() == [[1]]
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1],
                                [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    # r = 3: |y| = 0 -> 7 wide; |y| = 1, 2 -> |x| <= 2 (1 + 4 <= 9, 4 + 4 <= 9, 9 + 4 > 9)
    assert disk(3).sum(axis=1).tolist() == [1, 5, 5, 7, 5, 5, 1]


def test_boundary_tolerance_by_hand():
    assert boundary_tolerance((6, 6)) == 1  # 0.008 * 8.49 = 0.068 -> 1
    assert boundary_tolerance((130, 130)) == 2  # 0.008 * 183.8 = 1.47 -> 2
    assert boundary_tolerance((480, 854)) == 8  # 0.008 * 979.6 = 7.84 -> 8 (DAVIS 480p)
    assert boundary_tolerance((480, 854), bound_th=3) == 3  # >= 1: pixels


def test_seg2bmap_square_by_hand():
    # a pixel is a boundary pixel if it differs from its E, S or SE neighbour: the ring is
    # shifted half a pixel up-left of the square
    expected = np.array([[0, 0, 0, 0, 0, 0],
                         [0, 1, 1, 1, 0, 0],
                         [0, 1, 0, 1, 0, 0],
                         [0, 1, 1, 1, 0, 0],
                         [0, 0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0]], bool)
    assert (seg2bmap(S) == expected).all()


def test_seg2bmap_image_border_is_not_a_boundary():
    # object = the last column of a 4x4 frame: only the column left of it is boundary (its E
    # neighbour differs); the last column compares with S only, the last row with E only
    seg = np.zeros((4, 4), bool)
    seg[:, 3] = True
    expected = np.zeros((4, 4), bool)
    expected[:, 2] = True
    assert (seg2bmap(seg) == expected).all()
    assert not seg2bmap(np.ones((5, 7), bool)).any()


def test_j_by_hand():
    p = block((6, 6), (2, 4), (2, 4)).astype(bool)  # 3x3 at (2..4, 2..4)
    g = block((6, 6), (1, 3), (1, 3)).astype(bool)  # 3x3 at (1..3, 1..3)
    assert db_eval_iou(g, p) == pytest.approx(4 / 14)  # overlap 2x2, union 9 + 9 - 4
    empty = np.zeros((6, 6), bool)
    assert db_eval_iou(empty, empty) == 1.0  # empty union
    assert db_eval_iou(g, empty) == 0.0 and db_eval_iou(empty, p) == 0.0
    stacked = db_eval_iou(np.stack([g, empty]), np.stack([p, empty]))
    assert stacked.tolist() == pytest.approx([4 / 14, 1.0])


def test_f_by_hand():
    # shift by 1 column: every boundary pixel of one ring is within the cross of the other -> 1
    assert f_measure(np.roll(S, 1, axis=1), S) == pytest.approx(1.0)
    # shift by 2 (cols 4..5, touching the right border): its ring is (1,3) (1,4) (1,5) (2,3)
    # (3,3) (3,4) (3,5); 5 of those 7 are within 1 px of S's ring -> P = 5/7; of S's 8 ring
    # pixels, (1,1) (2,1) (3,1) are farther -> R = 5/8; F = 2PR/(P+R) = 2/3
    assert f_measure(np.roll(S, 2, axis=1), S) == pytest.approx(2 / 3)
    empty = np.zeros((6, 6), bool)
    assert f_measure(empty, S) == 0.0  # no predicted boundary: P = 1, R = 0
    assert f_measure(S, empty) == 0.0  # no ground-truth boundary: P = 0, R = 1
    assert f_measure(empty, empty) == 1.0


def test_f_thin_lines_and_tolerance_by_hand():
    # a 1-px vertical line at column c, rows a..b has the boundary columns c-1 and c on rows
    # a-1..b; a prediction d columns to the right has columns c+d-1 and c+d. Same rows, so a
    # pixel is matched iff its column distance <= the tolerance.
    for shape, d, expected in [((10, 10), 2, 0.5),    # tol 1: one column of each side matched
                               ((130, 130), 2, 1.0),  # tol 2: all matched
                               ((130, 130), 3, 0.5)]:  # tol 2: one column of each side
        g = np.zeros(shape, bool)
        g[2:7, 3] = True
        p = np.zeros(shape, bool)
        p[2:7, 3 + d] = True
        assert f_measure(p, g) == pytest.approx(expected), (shape, d)
        assert db_eval_iou(g, p) == 0.0


def test_db_statistics_by_hand():
    v = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    # N = 8: round(linspace(1, 8, 5) + 1e-10) - 1 = [0, 2, 4, 5, 7]; bin 0 = v[0:3], bin 3 = v[5:8]
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(4 / 8)  # 0.5 itself is not > 0.5
    assert decay == pytest.approx((0.9 + 0.8 + 0.7) / 3 - (0.4 + 0.3 + 0.2) / 3)
    # N = 5: ids [0, 1, 2, 3, 4]; bin 0 = v[0:2], bin 3 = v[3:5]
    assert db_statistics([1, 0.5, 0, 0.25, 0.75])[2] == pytest.approx(0.75 - 0.5)
    # N = 3: linspace = [1, 1.5, 2, 2.5, 3] -> rounded up at .5 -> ids [0, 1, 1, 2, 2]
    assert db_statistics([0.2, 0.4, 1.0])[2] == pytest.approx(0.3 - 1.0)
    # N = 1: every bin is v[0:1] -> decay 0
    assert db_statistics([0.7]) == pytest.approx((0.7, 1.0, 0.0))
    # NaN: skipped by the mean, counted as not recalled
    m, r, _ = db_statistics([1.0, np.nan, 0.0, 1.0])
    assert m == pytest.approx(2 / 3) and r == pytest.approx(2 / 4)


# --- the sequence-level rules, on a tree written in the official layout -----------------------

def _rules_tree(tmp_path):
    """alpha (6x6, 5 frames, K = 3 from the first frame: ids 1 and 3, id 2 absent) and beta
    (10x8, 3 frames, one object). Returns (davis_root, results) with the hand numbers below."""
    root, res = tmp_path / "DAVIS17" / "trainval", tmp_path / "res"  # under a datasets root
    sq = (2, 3), (2, 3)
    gt = []
    for t in range(5):
        lab = block((6, 6), *sq, 1)
        if t == 0:
            block(None, (0, 0), (0, 1), 3, out=lab)  # object 3: first frame only (disappears)
        if t in (2, 3):
            block(None, (4, 5), (0, 1), 2, out=lab)  # object 2: appears at frame 2
        if t == 1:
            block(None, (2, 3), (4, 5), 255, out=lab)  # void right of the square
        gt.append(lab)
    write_davis_sequence(str(root), "alpha", gt)
    write_davis_sequence(str(root), "beta", [block((10, 8), (3, 6), (2, 4)) for _ in range(3)])
    write_list(str(root), "2017", "val", ["alpha", "beta"])
    write_results(str(res), "alpha", {
        0: np.full((6, 6), 7),  # garbage in the first frame: not scored, not checked
        1: block((6, 6), (2, 3), (2, 5), 1),  # square + the void area
        2: block((6, 6), (2, 3), (3, 4), 1),  # shifted by 1
        3: block((6, 6), (2, 3), (4, 5), 1),  # shifted by 2
    })  # no file for the last frame: it is not read
    write_results(str(res), "beta", {1: block((10, 8), (3, 6), (2, 4))})
    return str(root), str(res)


# per object, frames 1..3 (hand numbers from the tests above):
#  object 1: J = [0.5 (void counts as background: 4 / 8), 1/3, 0], F = [0.9, 1, 2/3]
#     F at frame 1: the prediction's ring has 11 px, 9 within 1 px of the square's -> P = 9/11,
#     R = 8/8, F = 2 * 9/11 / (20/11) = 0.9
#  object 2 (never predicted, padded empty): J = F = [1 (both empty), 0, 0]
#  object 3 (absent after frame 0, never predicted): J = F = [1, 1, 1]
#  beta object 1: exact -> J = F = [1]
def _stats3(v):  # N = 3: ids [0, 1, 1, 2, 2] -> decay = mean(v0, v1) - v2
    return np.mean(v), np.mean(np.array(v) > 0.5), (v[0] + v[1]) / 2 - v[2]


EXPECTED_ROWS = [
    ("alpha_1", *_stats3([0.5, 1 / 3, 0.0]), *_stats3([0.9, 1.0, 2 / 3])),
    ("alpha_2", *_stats3([1.0, 0.0, 0.0]), *_stats3([1.0, 0.0, 0.0])),
    ("alpha_3", *_stats3([1.0, 1.0, 1.0]), *_stats3([1.0, 1.0, 1.0])),
    ("beta_1", 1.0, 1.0, 0.0, 1.0, 1.0, 0.0),
]
# pooled over the 4 objects (not over the 2 sequences)
EXPECTED_GLOBAL_CSV = ("J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
                       "0.725,0.653,0.583,0.229,0.797,0.833,0.196\n")
EXPECTED_SEQ_CSV = ("Sequence,J-Mean,F-Mean\n"
                    "alpha_1,0.278,0.856\n"
                    "alpha_2,0.333,0.333\n"
                    "alpha_3,1.000,1.000\n"
                    "beta_1,1.000,1.000\n")


def test_sequence_rules_by_hand(tmp_path):
    root, res = _rules_tree(tmp_path)
    scores = evaluate_davis(root, res, progress=False)
    assert [r[0] for r in scores.rows] == [r[0] for r in EXPECTED_ROWS]
    for got, want in zip(scores.rows, EXPECTED_ROWS):
        assert got[1:] == pytest.approx(want[1:]), got[0]
    g = scores.global_
    assert g["J-Mean"] == pytest.approx((1 / 3 * (0.5 + 1 / 3) + 1 / 3 + 1 + 1) / 4)
    assert g["J&F-Mean"] == pytest.approx((g["J-Mean"] + g["F-Mean"]) / 2)
    paths = write_davis_csvs(scores, res, "val")
    assert open(paths[0]).read() == EXPECTED_GLOBAL_CSV
    assert open(paths[1]).read() == EXPECTED_SEQ_CSV
    table = format_davis_tables(scores, "val")
    assert table.startswith("--------------------------- Global results for val")
    assert "alpha_1" in table and "J&F-Mean" in table


def test_more_objects_than_ground_truth_is_rejected(tmp_path):
    root, res = _rules_tree(tmp_path)
    write_results(res, "alpha", {2: block((6, 6), (0, 1), (0, 1), 4)})  # id 4 > K = 3
    with pytest.raises(VOSEvaluationError, match=r"alpha.*object id 4.*3 object"):
        evaluate_davis(root, res, progress=False)


def test_davis2016_merges_objects(tmp_path):
    root, res = tmp_path / "DAVIS", tmp_path / "res"
    gt = block((6, 6), (0, 1), (0, 1), 1, out=block((6, 6), (3, 4), (3, 4), 2))
    write_davis_sequence(str(root), "gamma", [gt, gt, gt])
    write_list(str(root), "2016", "val", ["gamma"])
    write_list(str(root), "2017", "val", ["gamma"])
    swapped = np.where(gt == 1, 2, np.where(gt == 2, 1, 0))
    write_results(str(res), "gamma", {1: swapped})
    # 2016: one object = every id > 0, so the swap is perfect; 2017 scores each id: both 0
    rows16 = evaluate_davis(str(root), str(res), year="2016", progress=False).rows
    assert rows16 == [("gamma_1", 1.0, 1.0, 0.0, 1.0, 1.0, 0.0)]
    rows17 = evaluate_davis(str(root), str(res), year="2017", progress=False).rows
    assert [r[0] for r in rows17] == ["gamma_1", "gamma_2"] and rows17[0][1] == 0.0
    write_results(str(res), "gamma", {1: np.where(gt > 0, 255, 0)})  # binary 0/255 result
    assert evaluate_davis(str(root), str(res), year="2016", progress=False).rows[0][1] == 1.0


def test_scene_occlusion_and_thin_line_by_hand(tmp_path):
    """The scene tree (tests/_vos_trees.py): results equal to the ground truth except that in
    "crossing" object 1 is drawn over object 2 (wrong occlusion order) and in "thin" the 1-px
    line is one frame late."""
    write_davis_tree(str(tmp_path))
    root = os.path.join(str(tmp_path), "DAVIS17", "trainval")
    seqs, res = scene_sequences(), str(tmp_path / "res")
    for name, labels in seqs.items():
        write_results(res, name, dict(enumerate(labels)))
    crossing = {}
    for t, lab in enumerate(seqs["crossing"]):
        crossing[t] = lab.copy()
        crossing[t][(lab == 2) & (block(lab.shape, (5, 12), (2 + 2 * t, 7 + 2 * t)) == 1)] = 1
    write_results(res, "crossing", crossing)
    write_results(res, "thin", {t: seqs["thin"][t - 1] for t in (1, 2)})
    rows = {r[0]: r for r in evaluate_davis(root, res, progress=False).rows}
    # crossing, frames 1..4: the 8x6 squares overlap in frames 3 and 4 on rows 8..12 x 4 columns
    # = 20 px; there object 1's ground truth is 48 - 20 px, its prediction 48 px (and the
    # converse for object 2): J = 28/48; frames 1, 2: J = 1. Mean = (1 + 1 + 2 * 28/48) / 4
    assert rows["crossing_1"][1] == pytest.approx(19 / 24)
    assert rows["crossing_2"][1] == pytest.approx(19 / 24)
    # thin: a 1-px line one column off has no overlap (J = 0) but every boundary pixel lies
    # within the 1-px tolerance of the other's (30x18: ceil(0.008 * 35.0) = 1): F = 1
    assert rows["thin_1"][1] == 0.0 and rows["thin_1"][4] == pytest.approx(1.0)
    # late-object: id 2 (absent from the first frame) and 3 are scored; all exact here
    assert [rows[f"late-object_{k}"][1] for k in (1, 2, 3)] == [1.0, 1.0, 1.0]


def test_streaming_evaluator_matches_disk_and_any_order(tmp_path):
    root, res = _rules_tree(tmp_path)
    disk_scores = evaluate_davis(root, res, progress=False)
    ev = VOSEvaluator(distributed=False, output_dir=str(tmp_path / "stream"))
    from diffews.evaluation.davis_metrics import read_label_png

    for seq, T in (("alpha", 5), ("beta", 3)):
        order = list(range(T))[::-1]  # last frame first: frames wait for the first frame
        for t in order:
            gt = read_label_png(os.path.join(root, "Annotations", "480p", seq, f"{t:05d}.png"))
            out = {}
            if 0 < t < T - 1:
                out["label_map"] = read_label_png(os.path.join(res, seq, f"{t:05d}.png"))
            ev.process([{"video": seq, "frame_index": t, "num_frames": T, "gt": gt}], [out])
    res_dict = ev.evaluate()["vos"]
    assert res_dict["J&F"] == pytest.approx(100 * disk_scores.global_["J&F-Mean"])
    assert res_dict["num_objects"] == 4 and res_dict["num_videos"] == 2
    assert open(tmp_path / "stream" / "global_results-val.csv").read() == EXPECTED_GLOBAL_CSV
    # a video whose scored frames are incomplete is an error, not a silent partial score
    ev.reset()
    ev.process([{"video": "beta", "frame_index": 0, "num_frames": 4, "gt": np.zeros((2, 2))}],
               [{}])
    with pytest.raises(VOSEvaluationError, match=r"beta: frames \[1, 2\]"):
        ev.evaluate()


def test_cli_writes_csvs_and_prints_table(tmp_path, capsys):
    root, res = _rules_tree(tmp_path)
    assert eval_davis.main(["--dataset-root", str(tmp_path), "--results", res, "--set", "val",
                            "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Global results for val" in out and "Per sequence results for val" in out
    assert open(os.path.join(res, "global_results-val.csv")).read() == EXPECTED_GLOBAL_CSV
    assert open(os.path.join(res, "per-sequence_results-val.csv")).read() == EXPECTED_SEQ_CSV


@pytest.mark.parametrize("breakage, message", [
    ("no_results", "results folder not found"),
    ("no_sequence", "no folder for sequence beta"),
    ("no_frame", "00001.png: no such file"),
    ("too_many", "object id 2 but the ground truth's first frame has 1"),
    ("no_list", "sequence list not found"),
    ("rgb", "labels must be indexed"),
])
def test_cli_bad_input_exits_nonzero_with_one_line(tmp_path, capsys, breakage, message):
    root, res = _rules_tree(tmp_path)
    import shutil

    from PIL import Image

    args = ["--dataset-root", str(tmp_path), "--results", res, "--no-progress"]
    if breakage == "no_results":
        args[3] = str(tmp_path / "nowhere")
    elif breakage == "no_sequence":
        shutil.rmtree(os.path.join(res, "beta"))
    elif breakage == "no_frame":
        os.remove(os.path.join(res, "beta", "00001.png"))
    elif breakage == "too_many":
        write_results(res, "beta", {1: block((10, 8), (0, 1), (0, 1), 2)})
    elif breakage == "no_list":
        args += ["--year", "2016"]
    elif breakage == "rgb":
        Image.new("RGB", (8, 10)).save(os.path.join(res, "beta", "00001.png"))
    assert eval_davis.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.slow
def test_cli_subprocess_exit_status(tmp_path):
    root, res = _rules_tree(tmp_path)
    os.remove(os.path.join(res, "alpha", "00002.png"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "inference_vos", "eval_davis.py"),
                           "--dataset-root", str(tmp_path), "--results", res, "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1
    assert "alpha/00002.png: no such file" in proc.stderr.strip().splitlines()[-1]
