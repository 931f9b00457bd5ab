# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The scores of a VOS evaluation and their reports as davis2017-evaluation writes and prints them
(``evaluation_method.py``): the global means over all objects (J&F-Mean = (J-Mean + F-Mean) / 2),
the two CSVs (pandas ``to_csv(index=False, float_format="%.3f")``) and the two tables (pandas
``to_string(index=False)``). The scoring rules are in ``vos_evaluation.py``.
"""

import csv
import io
import math
import os
from collections import OrderedDict
from typing import List, Tuple

import numpy as np

from ..utils.atomic import atomic_write
from .davis_metrics import VOSEvaluationError

__all__ = ["DAVISScores", "write_davis_csvs", "format_davis_tables", "GLOBAL_COLUMNS",
           "SEQUENCE_COLUMNS"]

GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
SEQUENCE_COLUMNS = ["Sequence", "J-Mean", "F-Mean"]


class DAVISScores:
    """Per-object rows and the global means of one evaluation.

    Attributes:
        rows: ``(name, J-M, J-R, J-D, F-M, F-R, F-D)`` per object, ``name = <sequence>_<k>``.
        global_: OrderedDict over ``GLOBAL_COLUMNS`` (values in [0, 1], as the official CSV).
        num_videos: sequences scored (a sequence whose first frame is empty adds no row).
    """

    def __init__(self, rows: List[tuple], num_videos: int):
        if not rows:
            raise VOSEvaluationError("no object was scored (every first frame is empty)")
        self.rows, self.num_videos = rows, num_videos
        cols = np.array([r[1:] for r in rows], dtype=np.float64)  # (objects, 6)
        means = cols.mean(axis=0)
        values = [(means[0] + means[3]) / 2, *means]
        self.global_ = OrderedDict((c, float(v)) for c, v in zip(GLOBAL_COLUMNS, values))

    def as_percent(self) -> "OrderedDict[str, float]":
        """detectron2-style results (x100): J&F, J, J-Recall, J-Decay, F, F-Recall, F-Decay."""
        g = self.global_
        names = ["J&F", "J", "J-Recall", "J-Decay", "F", "F-Recall", "F-Decay"]
        res = OrderedDict((n, 100.0 * float(g[c])) for n, c in zip(names, GLOBAL_COLUMNS))
        res["num_objects"] = len(self.rows)
        res["num_videos"] = self.num_videos
        return res


def _csv_text(header: List[str], rows: List[list]) -> str:
    """CSV as pandas ``to_csv(index=False, float_format="%.3f")`` writes it (NaN as empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([v if isinstance(v, str) else ("" if math.isnan(v) else "%.3f" % v)
                         for v in row])
    return buf.getvalue()


def write_davis_csvs(scores: DAVISScores, folder: str, subset: str = "val") -> Tuple[str, str]:
    """Write ``global_results-<subset>.csv`` and ``per-sequence_results-<subset>.csv`` into
    ``folder`` atomically (replacing earlier ones; the official script would instead reuse them).

    Returns:
        the two paths.
    """
    texts = {
        f"global_results-{subset}.csv": _csv_text(GLOBAL_COLUMNS, [list(scores.global_.values())]),
        f"per-sequence_results-{subset}.csv": _csv_text(
            SEQUENCE_COLUMNS, [[r[0], r[1], r[4]] for r in scores.rows]),
    }
    paths = []
    for name, text in texts.items():
        path = os.path.join(folder, name)
        atomic_write(path, text, "w", newline="")  # newline="": the CSV's own "\n" endings
        paths.append(path)
    return paths[0], paths[1]


def _table(header: List[str], rows: List[list]) -> str:
    """Right-aligned columns like pandas ``to_string(index=False)``: floats with 6 decimals and
    the trailing zeros every value of the column shares removed."""
    cols = []
    for i, name in enumerate(header):
        vals = [r[i] for r in rows]
        if vals and not isinstance(vals[0], str):
            text = ["%.6f" % v for v in vals]
            while all(s.endswith("0") and not s.endswith(".0") for s in text):
                text = [s[:-1] for s in text]
            vals = text
        width = max([len(name)] + [len(v) for v in vals])
        cols.append([name.rjust(width)] + [v.rjust(width) for v in vals])
    return "\n".join(" ".join(c[i] for c in cols) for i in range(len(rows) + 1))


def format_davis_tables(scores: DAVISScores, subset: str = "val") -> str:
    """The global and per-sequence tables as evaluation_method.py prints them."""
    return (f"--------------------------- Global results for {subset} "
            "---------------------------\n"
            + _table(GLOBAL_COLUMNS, [list(scores.global_.values())])
            + f"\n\n---------- Per sequence results for {subset} ----------\n"
            + _table(SEQUENCE_COLUMNS, [[r[0], r[1], r[4]] for r in scores.rows]))
