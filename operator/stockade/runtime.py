"""The operator's long-lived parts, made once at startup and shared by every handler module."""

from __future__ import annotations

from stockade.kube import Kube
from stockade.leadership import Leadership
from stockade.reconcile import Reconciler
from stockade.settings import Settings
from stockade.store import Store


class Runtime:
    settings: Settings
    kube: Kube
    store: Store
    reconciler: Reconciler
    leadership: Leadership


RUNTIME = Runtime()
