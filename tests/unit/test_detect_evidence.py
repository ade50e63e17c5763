"""Evidence stays bounded whatever a signal carries."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.detect import evidence


@pytest.mark.parametrize(("value", "expected"), [
    ("x" * 600, "x" * evidence.MAX_STRING + "…"),
    (list(range(20)), [*range(evidence.MAX_ITEMS), "… 4 more"]),
    ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}},
     {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": "…"}}}}}}}}),
    (("t", 1, None, True, 1.5), ["t", 1, None, True, 1.5]),
    (object, "<class 'object'>"),
])
def test_bounded(value: Any, expected: Any) -> None:
    assert evidence.bounded(value) == expected


def test_pod_summary_keeps_what_an_investigator_needs() -> None:
    pod = {"metadata": {"uid": "u", "labels": {"a": "b"}, "ownerReferences": [{"kind": "Job", "name": "j"}]},
           "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i", "env": [{"name": "SECRET"}],
                                                     "resources": {"limits": {"cpu": "1"}}}],
                    "volumes": [{"name": "v", "emptyDir": {}}]},
           "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}}
    summary = evidence.pod_summary(pod)
    assert summary == {"uid": "u", "labels": {"a": "b"}, "ownerReferences": ["Job/j"], "nodeName": "n",
                       "volumes": [{"name": "v", "type": "emptyDir"}],
                       "containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1"}}}],
                       "phase": "Running", "podIPs": ["10.0.0.1", "fd00::1"]}
    assert evidence.pod_summary(None) is None


def test_events_newest_last_and_few() -> None:
    events = [{"type": "Normal", "reason": f"R{i}", "message": "m", "lastTimestamp": f"2025-01-01T00:00:{i:02d}Z"}
              for i in range(10)]
    kept = evidence.event_summary(reversed(events))
    assert [e["reason"] for e in kept] == ["R5", "R6", "R7", "R8", "R9"]


def test_assemble_drops_the_bulkiest_parts_past_the_limit() -> None:
    signal = {f"k{i}": "v" * 500 for i in range(30)}
    pod = {"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    found = evidence.assemble({"rule": "r"}, signal, pod, [])
    assert found["rule"] == "r"
    assert found["signal"]["truncated"] is True
    assert found["pod"]["uid"] == "u"
    assert evidence.size(found) <= evidence.MAX_EVIDENCE_BYTES


def test_compact_keeps_the_findings_and_the_pod_uid() -> None:
    full = {"rule": "r", "destination": {"ip": "1.2.3.4"}, "signal": {"x": 1}, "pod": {"uid": "u", "labels": {}},
            "events": [{}]}
    assert evidence.compact(full) == {"rule": "r", "destination": {"ip": "1.2.3.4"}, "pod": {"uid": "u"},
                                      "compacted": True}
    assert evidence.compact({"rule": "r"}) == {"rule": "r"}


def test_a_waiting_signal_keeps_only_its_bounded_copy() -> None:
    from stockade.detect.evidence import MAX_EVIDENCE_BYTES, kept_signal, size

    small = {"rule": "r", "output_fields": {"k8s.pod.name": "rome"}}
    assert kept_signal(small) == small
    huge = {f"k{i}": "x" * 5000 for i in range(40)}
    kept = kept_signal(huge)
    assert kept["truncated"] is True and kept["bytes"] > MAX_EVIDENCE_BYTES
    assert size(kept) < 100
