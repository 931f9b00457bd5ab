# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""``SINESupportSet``: a support set encoded once (its pooled queries), for any number of targets.

What SINE's decoder reads from the supports is fixed once they are pooled (``pooling.py``): the
ID queries (one per reference instance) and one class query per class. The fusion with a target
happens inside the decoder, so these pre-fusion queries are what a support set keeps:

* ``id_queries`` (N, C) and ``id_labels`` (N,): one per reference instance, with its class;
* ``class_queries`` (M, C) and ``class_labels`` (M,): one per class;
* ``class_sums`` (M, C) and ``class_areas`` (M,): the unnormalised pooling of each class
  (``pooling.pooled_sums``), so that two sets holding the same class can be merged.

``rule`` names the pooling and preprocessing that made the set ("fss", "fsis" or "vos"; docs/SINE.md
section 4). The file format mirrors DiffewS's ``SupportSet`` (diffews/modeling/support_set.py): a
``torch.save`` of a plain dict read back with ``weights_only=True``::

    {"format": "diffews.SINESupportSet", "version": 1, "signature": {...}, "rule": "fss",
     "info": [{...} per ID query], "id_queries": (N, C), "id_labels": (N,), "class_queries":
     (M, C), "class_labels": (M,), "class_sums": (M, C), "class_areas": (M,)}

``signature`` (``SINE.support_signature()``) describes the model that pooled the set: encoder
architecture, widths, padding and a fingerprint of the encoder and neck weights. Using a set with
another model is an error naming the first field that differs.
"""

import os
from typing import Dict, List, Optional, Sequence

import torch

from ...utils.atomic import atomic_path
from ...utils.errors import SupportSetError
from ..support_set import signature_difference

FORMAT = "diffews.SINESupportSet"
VERSION = 1
RULES = ("fss", "fsis", "vos")
EPS = 1e-8
_TENSORS = ("id_queries", "id_labels", "class_queries", "class_labels", "class_sums",
            "class_areas")

__all__ = ["SINESupportSet"]


class SINESupportSet:
    """Pooled reference queries of one support set (see the module docstring).

    Args:
        id_queries: (N, C). id_labels: (N,) int64 class (or object) of each ID query.
        class_queries: (M, C). class_labels: (M,) int64, distinct.
        class_sums: (M, C) and class_areas: (M,): unnormalised pooling per class.
        rule: "fss", "fsis" or "vos".
        signature: the encoding model's ``support_signature()``; None inside benchmark episodes.
        info: one dict per ID query (e.g. ``{"source": "dog.jpg"}``).
    """

    def __init__(self, id_queries: torch.Tensor, id_labels: torch.Tensor,
                 class_queries: torch.Tensor, class_labels: torch.Tensor,
                 class_sums: torch.Tensor, class_areas: torch.Tensor, rule: str,
                 signature: Optional[Dict] = None, info: Optional[List[Dict]] = None):
        if rule not in RULES:
            raise SupportSetError(f"SINESupportSet rule {rule!r} is not one of {RULES}")
        n, m = id_queries.shape[0], class_queries.shape[0]
        if id_labels.shape != (n,) or class_labels.shape != (m,):
            raise SupportSetError(
                f"SINESupportSet: {tuple(id_labels.shape)} id labels for {n} ID queries, "
                f"{tuple(class_labels.shape)} class labels for {m} class queries")
        if class_sums.shape != class_queries.shape or class_areas.shape != (m,):
            raise SupportSetError(
                f"SINESupportSet: class sums {tuple(class_sums.shape)} / areas "
                f"{tuple(class_areas.shape)} for class queries {tuple(class_queries.shape)}")
        if id_queries.shape[1:] != class_queries.shape[1:]:
            raise SupportSetError(f"SINESupportSet: ID queries {tuple(id_queries.shape)} "
                                      f"and class queries {tuple(class_queries.shape)} differ")
        if len(set(class_labels.tolist())) != m:
            raise SupportSetError(f"SINESupportSet: repeated class labels "
                                      f"{class_labels.tolist()}")
        info = [dict(i) for i in info] if info is not None else [{} for _ in range(n)]
        if len(info) != n:
            raise SupportSetError(f"SINESupportSet: {len(info)} info entries for {n} "
                                      "ID queries")
        self.id_queries, self.id_labels = id_queries, id_labels.long()
        self.class_queries, self.class_labels = class_queries, class_labels.long()
        self.class_sums, self.class_areas = class_sums, class_areas
        self.rule, self.signature, self.info = rule, signature, info

    def __len__(self) -> int:
        """The number of reference instances (ID queries)."""
        return self.id_queries.shape[0]

    @property
    def num_classes(self) -> int:
        return self.class_queries.shape[0]

    @property
    def device(self) -> torch.device:
        return self.class_queries.device

    @property
    def dtype(self) -> torch.dtype:
        return self.class_queries.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the set's tensors (what a cache of sets charges for it)."""
        return sum(getattr(self, k).numel() * getattr(self, k).element_size() for k in _TENSORS)

    def _replace(self, **changes) -> "SINESupportSet":
        fields = {k: getattr(self, k) for k in _TENSORS}
        fields.update(rule=self.rule, signature=self.signature, info=self.info)
        fields.update(changes)
        return SINESupportSet(**fields)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "SINESupportSet":
        """A copy on ``device`` whose float tensors are ``dtype`` (labels stay int64)."""
        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() and dtype else None)

        return self._replace(**{k: move(getattr(self, k)) for k in _TENSORS})

    def relabel(self, label: int) -> "SINESupportSet":
        """This one-class set with its class (and its ID queries' class) set to ``label``."""
        if self.num_classes != 1:
            raise SupportSetError(f"relabel: the set holds {self.num_classes} classes, not one")
        return self._replace(id_labels=torch.full_like(self.id_labels, int(label)),
                             class_labels=torch.tensor([int(label)]))

    @staticmethod
    def cat(sets: Sequence["SINESupportSet"]) -> "SINESupportSet":
        """All ID queries of ``sets`` in order, and one class query per class: a class held by
        several sets is pooled over all of them from their sums (the same query as pooling
        them at once, up to float rounding), a class held by one set keeps its query."""
        sets = list(sets)
        if not sets:
            raise SupportSetError("SINESupportSet.cat needs at least one set")
        first = sets[0]
        for i, s in enumerate(sets[1:], 1):
            diff = signature_difference(s.signature, first.signature, (f"set {i}", "set 0"))
            if diff:
                raise SupportSetError(f"SINESupportSet.cat: set {i} and set 0 come from "
                                          f"different models ({diff})")
            if s.rule != first.rule:
                raise SupportSetError(f"SINESupportSet.cat: set {i} was pooled by rule "
                                          f"{s.rule!r}, set 0 by {first.rule!r}")
        if first.rule == "vos":
            raise SupportSetError("SINESupportSet.cat: VOS sets are pooled again each frame "
                                      "from all references (SINE.encode_support_set('vos'))")
        labels: List[int] = []
        owners: Dict[int, List[tuple]] = {}
        for s in sets:
            for j, label in enumerate(s.class_labels.tolist()):
                if label not in owners:
                    labels.append(label)
                owners.setdefault(label, []).append((s, j))
        queries, sums, areas = [], [], []
        for label in labels:
            parts = owners[label]
            total = sum(s.class_sums[j] for s, j in parts)
            area = sum(s.class_areas[j] for s, j in parts)
            sums.append(total)
            areas.append(area)
            queries.append(parts[0][0].class_queries[parts[0][1]] if len(parts) == 1
                           else total / (area + EPS))
        return first._replace(
            id_queries=torch.cat([s.id_queries for s in sets]),
            id_labels=torch.cat([s.id_labels for s in sets]),
            class_queries=torch.stack(queries), class_labels=torch.tensor(labels),
            class_sums=torch.stack(sums), class_areas=torch.stack(areas),
            info=[i for s in sets for i in s.info])

    def check_compatible(self, signature: Dict, what: str = "this model") -> None:
        """Raise ``SupportSetError`` unless the set was pooled by a model with
        ``signature``."""
        if self.signature is None:
            raise SupportSetError("this SINESupportSet carries no model signature (it was "
                                      "built inside a benchmark episode); encode the supports "
                                      "with SINE.encode_support_set")
        diff = signature_difference(self.signature, signature, ("the set", what))
        if diff:
            raise SupportSetError(f"SINESupportSet was encoded by another model than {what}"
                                      f": {diff}; encode the supports again with this model")

    def save(self, path: str) -> None:
        """Write the set (CPU tensors) to ``path`` atomically."""
        state = {"format": FORMAT, "version": VERSION, "signature": self.signature,
                 "rule": self.rule, "info": self.info}
        state.update({k: getattr(self, k).detach().cpu() for k in _TENSORS})
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @staticmethod
    def load(path: str, map_location="cpu") -> "SINESupportSet":
        """Read a file written by ``save``; errors name the file."""
        if not os.path.isfile(path):
            raise SupportSetError(f"{path}: no such SINESupportSet file")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # pickle, zip or unsupported-type errors all mean "not our file"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SupportSetError(f"{path}: not a readable SINESupportSet file ({first})"
                                      ) from e
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise SupportSetError(f"{path}: not a SINESupportSet file (no '{FORMAT}' format "
                                      "tag)")
        if state.get("version") != VERSION:
            raise SupportSetError(f"{path}: SINESupportSet file version "
                                      f"{state.get('version')}, this DiffewS reads {VERSION}")
        missing = [k for k in _TENSORS if k not in state]
        if missing:
            raise SupportSetError(f"{path}: SINESupportSet file lacks {missing[0]!r}")
        try:
            return SINESupportSet(**{k: state[k] for k in _TENSORS}, rule=state.get("rule"),
                                  signature=state.get("signature"), info=state.get("info"))
        except SupportSetError as e:
            raise SupportSetError(f"{path}: {e}") from e

    def __repr__(self) -> str:
        return (f"SINESupportSet({len(self)} reference(s), classes {self.class_labels.tolist()}, "
                f"rule {self.rule}, {self.dtype}, {self.device})")
