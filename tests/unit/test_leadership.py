"""Which peers are alive, from a ClusterKopfPeering's status (kopf's own format), and who leads."""

from __future__ import annotations

import datetime

from stockade.leadership import is_active, live_peers

NOW = datetime.datetime(2026, 12, 4, 12, 0, 0, tzinfo=datetime.UTC)


def peer(seconds_ago: float, lifetime: int = 15, priority: int = 0) -> dict[str, object]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"lastseen": seen.isoformat().replace("+00:00", "Z"), "lifetime": lifetime, "priority": priority}


def test_only_peers_within_their_lifetime_are_alive() -> None:
    status = {"fresh": peer(3), "stale": peer(20), "long-lived": peer(20, lifetime=60), "junk": "x",
              "no-time": {"lifetime": 15}, "bad-lifetime": {**peer(1), "lifetime": "soon"}}
    assert live_peers(status, NOW) == {"fresh": 3.0, "long-lived": 20.0}


def test_a_live_peer_at_or_above_our_priority_makes_us_standby() -> None:
    assert is_active({"me": peer(0, priority=5), "old": peer(2, priority=4)}, "me", 5, NOW)
    assert not is_active({"me": peer(0, priority=5), "new": peer(2, priority=5)}, "me", 5, NOW)
    assert is_active({"me": peer(0, priority=5), "dead": peer(30, priority=9)}, "me", 5, NOW)
