"""``status.violations``: how a new record joins the list, and how long the list gets (pure).

Two writers append to it, detection (the responder) and admission (the recorder), each in a status write
that carries the whole list; both merge here, so the list has one set of rules whoever writes:

* a repeat folds into the newest kept entry that it repeats (``count`` grows, ``lastTime`` moves on):
  for admission, the same refusal or warning of the same request (a controller retrying); for detection,
  the same violation on the same pod when nothing was done about it (``none (...)``: a storm on a pod
  already quarantined), while one that was acted on is always an entry of its own;
* only the newest ``keep`` entries stay (older ones live on in Events, logs and metrics), and of those
  only the newest ``evidence.FULL_KEPT`` keep bulky evidence; older ones keep its compact form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stockade.detect import evidence

ADMISSION = "admission"


def _identity(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two records the same violation."""
    if record.get("source") == ADMISSION:
        return ADMISSION, record.get("kind"), record.get("action"), record.get("detail")
    return record.get("source"), record.get("kind"), record.get("pod"), record.get("detail")


def _folds(record: Mapping[str, Any]) -> bool:
    """A repeat that changed nothing: admission only ever refuses or warns; detection when it did nothing."""
    return record.get("source") == ADMISSION or str(record.get("action") or "").startswith("none")


def merge(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], keep: int) -> list[dict[str, Any]]:
    """``old`` with ``new`` appended (repeats folded), the newest ``keep``, older evidence compacted."""
    kept = [dict(v) for v in old]
    for record in new:
        same = next((v for v in reversed(kept) if _identity(v) == _identity(record)), None) \
            if _folds(record) else None
        if same is not None:
            same["count"] = int(same.get("count") or 1) + int(record.get("count") or 1)
            same["lastTime"] = record["time"]
        else:
            kept.append(dict(record))
    kept = kept[-keep:]
    for entry in kept[:-evidence.FULL_KEPT]:
        if isinstance(entry.get("evidence"), Mapping) and not entry["evidence"].get("compacted"):
            entry["evidence"] = evidence.compact(entry["evidence"])
    return kept
