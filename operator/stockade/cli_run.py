"""What ``stockade run`` checks before kopf starts: its ports are free, and whose identity it runs as."""

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
