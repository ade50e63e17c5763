"""Admission at start-up: who the operator is, the webhook server's certificate and address, and the
configurations and policies admission is made of (applied by the replica that leads).

Used by the composition root (:mod:`stockade.app`), which hands the server to kopf and the objects to
the admission guard.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

from stockade.admission import certs, health, vap, webhook
from stockade.admission.config import AdmissionSettings
from stockade.admission.server import ThreadedWebhookServer
from stockade.kube import Kube


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class AdmissionSetup:
    def __init__(self, config: AdmissionSettings, excluded: list[str]) -> None:
        self.config = config
        self.excluded = excluded  # namespaces admission never judges (the operator's own)
        self.usernames: frozenset[str] = frozenset()
        self.exempt_groups: frozenset[str] = frozenset(config.admission_exempt_groups)
        self.cert_dir: tempfile.TemporaryDirectory[str] | None = None
        self.server: ThreadedWebhookServer | None = None
        self.policies: list[dict[str, Any]] = []
        self.webhooks: list[dict[str, Any]] = []
        self.watched: list[dict[str, Any]] = []  # what the admission guard keeps whole
        self.owners: dict[health.ObjectKey, str] = {}
        self.where = ""  # for the start-up log line

    async def prepare(self, kube: Kube) -> None:
        config = self.config
        self.usernames = frozenset(config.operator_usernames or [await webhook.whoami(kube)])
        if config.webhook_cert_dir:
            directory = Path(config.webhook_cert_dir)
        else:  # a fresh CA for each start, its key removed when the process exits
            self.cert_dir = tempfile.TemporaryDirectory(prefix="stockade-webhook-")
            directory = Path(self.cert_dir.name)
        service = config.service_ref()
        if service is not None:
            host = config.webhook_host or "0.0.0.0"  # every interface: the Service sends requests here
            port = config.webhook_port or 9443
            paths = certs.ensure(directory, certs.service_names(*service), [])
            url = None
        else:
            host = config.webhook_host or "127.0.0.1"
            port = config.webhook_port or _free_port(host)
            paths = certs.ensure(directory, ["localhost"], [host])
            url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        self.server = ThreadedWebhookServer(
            addr=host, port=port, certfile=str(paths.cert), pkeyfile=str(paths.key), cafile=str(paths.ca))
        clients = {hid: webhook.client_config(paths.ca_bundle(), hid, url=url, service=service,
                                              service_port=config.webhook_service_port)
                   for hid in (webhook.VALIDATE_ID, webhook.MUTATE_ID, webhook.AGENTRUN_MUTATE_ID,
                               webhook.POLICY_ID, webhook.POLICY_DEFAULTS_ID)}
        users = sorted(self.usernames)
        groups = sorted(self.exempt_groups)
        name = config.webhook_configuration
        # Policies and bindings named after the configurations (<name>-baseline, ...): the chart's full name,
        # or the local operator's own, so that neither's uninstall removes the other's.
        self.policies = vap.manifests(users, self.excluded, groups, prefix=name)
        self.webhooks = [
            webhook.validating(clients, users, self.excluded, timeout=config.webhook_timeout_seconds, name=name,
                               exempt_groups=groups),
            webhook.mutating(clients, users, self.excluded, timeout=config.webhook_timeout_seconds, name=name,
                             exempt_groups=groups)] if config.admission_manage_webhooks else []
        self.watched = [*(self.policies if config.admission_manage_policy or config.admission_watch_policy else []),
                        *self.webhooks]
        self.owners = {health.key_of(obj): health.OPERATOR if config.admission_manage_policy else health.SHIPPED
                       for obj in self.policies}
        self.owners |= {health.key_of(obj): health.OPERATOR if config.admission_recreate_webhooks else health.FILLED
                        for obj in self.webhooks}
        self.where = (f"{host}:{port} for {f'service {service[0]}/{service[1]}' if service else url}; operator "
                      f"identity {', '.join(users)}; break-glass groups {', '.join(groups) or 'none'}")

    async def apply(self, kube: Kube) -> None:
        """The configurations (and, where the operator manages them, the policies) as they should be: written
        by the active replica when it starts or takes over, so a standby never points them at itself and a
        dead leader's URL is replaced by the survivor's."""
        if self.config.admission_manage_policy:
            await webhook.apply(kube, self.policies)
        if self.webhooks:
            await webhook.apply(kube, self.webhooks)
