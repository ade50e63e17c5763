"""What ``stockade run`` checks before kopf starts: its ports are free, whose identity it runs as, and that
no other Stockade operator is active in the cluster under another peering (or none)."""

from __future__ import annotations

import logging

log = logging.getLogger("stockade")

SERVICEACCOUNT_PREFIX = "system:serviceaccount:"


def identity_warning(username: str) -> str | None:
    """A warning when the operator runs with a person's credentials (``make run``: the user's kubeconfig).

    Admission exempts the operator's identity, so every edit that person makes in a run namespace is let
    through as the operator's own; the deployed operator runs as its ServiceAccount, which nobody edits as.
    """
    if username.startswith(SERVICEACCOUNT_PREFIX):
        return None
    return (f"the operator runs as {username!r}, not as a ServiceAccount: admission exempts this identity, so "
            f"what {username!r} changes in run namespaces is admitted as the operator's own (it is still "
            "restored and recorded). The deployed operator runs as its ServiceAccount (the chart's "
            "stockade-system:stockade); to run locally as that identity, set STOCKADE_IMPERSONATE="
            "system:serviceaccount:stockade-system:stockade (as the e2e suite does)")


def warn_if_personal_identity() -> None:
    """Ask the API server who the operator is (impersonation included) and warn for a person's identity.
    A failure here is not fatal: the operator's own start-up reports an unreachable API server."""
    from stockade.kube import Kube
    from stockade.settings import Settings

    try:
        config = Settings()
        kube = Kube.connect(workers=1, impersonate=config.impersonate)
        try:
            review = kube.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                  {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        finally:
            kube.executor.shutdown(wait=False)
    except Exception as err:  # a warning only: kopf reports an unreachable API server itself
        log.debug("could not ask who the operator is: %s", err)
        return
    username = str(((review.get("status") or {}).get("userInfo") or {}).get("username") or "")
    warning = identity_warning(username) if username else None
    if warning:
        log.warning(warning)


def other_operator(own_peering: str | None) -> str | None:
    """Why this operator must not start: another one is alive in a peering that is not ours (``make run``,
    which has none, beside the chart's operator; or two installations). Two operators fence the same
    AgentRuns, and each one's admission refuses the other's writes in run namespaces as a stranger's, so
    neither converges. Replicas of one installation share its peering and take turns (kopf peering).
    None when nothing else is alive or the peerings cannot be read (kopf's CRD absent, no permission)."""
    import datetime

    from stockade.kube import Kube
    from stockade.leadership import live_peers
    from stockade.settings import Settings

    try:
        kube = Kube.connect(workers=1, impersonate=Settings().impersonate)
        try:
            listed = kube.request("GET", "/apis/kopf.dev/v1/clusterkopfpeerings")
        finally:
            kube.executor.shutdown(wait=False)
    except Exception as err:  # kopf reports an unreachable API server itself; no peering CRD: nobody else
        log.debug("could not read the peerings: %s", err)
        return None
    now = datetime.datetime.now(datetime.UTC)
    for peering in listed.get("items") or []:
        name = str((peering.get("metadata") or {}).get("name") or "")
        if name == own_peering:
            continue
        for identity, age in live_peers(peering.get("status") or {}, now).items():
            return (f"another Stockade operator is active in this cluster: {identity!r} in peering {name!r}, "
                    f"seen {age:.0f} s ago. Two operators fence the same AgentRuns and each refuses the "
                    f"other's writes, so neither converges. Stop it first (the chart's: helm uninstall, or "
                    f"kubectl scale deployment --replicas=0), or run with --peering={name} to take turns with it")
    return None
