"""Who the operator is to the API server, and the pool of connections it talks over.

Credentials come from kopf's own login functions: the service account in a pod, else the kubeconfig's
current context (its token, client certificate or basic auth). kopf's watches log in the same way (a
``@kopf.on.login`` handler returns the same answer), so the operator has one identity. The official client
is loaded only for a kubeconfig user that runs a credential plugin (``exec``, ``auth-provider``) or reads
a ``tokenFile``, which kopf's minimal login does not do: otherwise the client is about 8 MB of resident
memory (72 MB against 80 MB with the operator's modules imported) for a TLS context and one header.

One urllib3 pool holds the kept-alive connections, all sharing one TLS context (the CA is loaded once, not
per connection).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import urllib3
import yaml

from stockade import __version__

if TYPE_CHECKING:
    import kopf

log = logging.getLogger(__name__)

_SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# What kopf's minimal kubeconfig login does not read: a user with one of these needs the official client.
_CLIENT_ONLY_USER_KEYS = ("exec", "auth-provider", "tokenFile")
# The kubeconfig fields that name a file, which kubectl reads relative to the kubeconfig's own folder.
_FILE_FIELDS = ("ca_path", "certificate_path", "private_key_path")


class NoCredentials(Exception):
    """Neither a service account nor a usable kubeconfig: there is nothing to log in with."""


def _kubeconfig_paths() -> list[Path]:
    value = os.environ.get("KUBECONFIG") or "~/.kube/config"
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def current_context() -> tuple[dict[str, Any], dict[str, Any]]:
    """The kubeconfig's current context and its user entry ({} for what is not there, or no kubeconfig),
    merged as kubectl merges KUBECONFIG's files: the first file that names a thing wins."""
    current: str | None = None
    contexts: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for path in _kubeconfig_paths():
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(config, dict):
            continue
        current = current or config.get("current-context")
        for item in config.get("contexts") or []:
            contexts.setdefault(item.get("name"), item.get("context") or {})
        for item in config.get("users") or []:
            users.setdefault(item.get("name"), item.get("user") or {})
    context = contexts.get(current) if current else None
    context = context if isinstance(context, dict) else {}
    user = users.get(str(context.get("user")))
    return context, user if isinstance(user, dict) else {}


def context_namespace() -> str:
    """The kubeconfig context's namespace, else "default" (as kubectl does)."""
    return str(current_context()[0].get("namespace") or "default")


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and _SERVICE_ACCOUNT_TOKEN.exists()


def needs_official_client() -> bool:
    """Whether logging in takes the official client: out of a pod, with a kubeconfig user that runs a plugin."""
    return not in_cluster() and any(key in current_context()[1] for key in _CLIENT_ONLY_USER_KEYS)


def keep_official_client_out() -> None:
    """Called before kopf is first imported by a process that needs no credential plugin: kopf imports the
    official client, when it is installed, only to offer its login, which the operator replaces (a None
    in ``sys.modules`` makes the import fail as if the package were absent)."""
    if "kopf" not in sys.modules and not needs_official_client():
        sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]


def login() -> kopf.ConnectionInfo:
    """The operator's credentials: in a pod its service account, else the kubeconfig's current context."""
    import kopf  # here, not above: keep_official_client_out must run before kopf is first imported

    settings = kopf.OperatorSettings()
    try:
        if in_cluster():
            info = _at_service_address(kopf.login_with_service_account(settings=settings))
        elif needs_official_client():
            info = kopf.login_via_client(logger=log, settings=settings)
        else:
            info = _with_absolute_paths(kopf.login_with_kubeconfig(settings=settings))
    except (kopf.LoginError, OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise NoCredentials(f"cannot log in to the API server (no service account, and the kubeconfig "
                            f"{os.environ.get('KUBECONFIG') or '~/.kube/config'}: {err!r})") from err
    if info is None or not info.server:
        raise NoCredentials("cannot log in to the API server: no service account and no kubeconfig "
                            "(set KUBECONFIG, or run in a pod)")
    return info


def _at_service_address(info: kopf.ConnectionInfo | None) -> kopf.ConnectionInfo | None:
    """The API server at the address the kubelet gives every pod (as the official client reads it), not by
    the name kubernetes.default.svc, which needs the cluster's DNS."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if info is None or not host:
        return info
    return dataclasses.replace(info, server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}")


def _with_absolute_paths(info: kopf.ConnectionInfo | None) -> kopf.ConnectionInfo | None:
    """A relative certificate path in a kubeconfig is relative to that kubeconfig's folder, as kubectl reads it
    (kopf's minimal login passes it on as written)."""
    if info is None:
        return None
    base = _kubeconfig_paths()[0].parent
    fixed: dict[str, Any] = {f: str(base / p) for f in _FILE_FIELDS
                             if isinstance(p := getattr(info, f), str) and p and not Path(p).is_absolute()}
    return dataclasses.replace(info, **fixed) if fixed else info


@dataclasses.dataclass
class Connection:
    """The API server's address, the Authorization header and a pool of kept-alive connections."""

    info: kopf.ConnectionInfo
    pool: urllib3.PoolManager
    maxsize: int = 64
    user_agent: str = f"stockade/{__version__}"
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, info: kopf.ConnectionInfo | None = None, maxsize: int = 64) -> Connection:
        info = info or login()
        return cls(info, _pool(info, maxsize), maxsize)

    def request(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], *,
                body: bytes | None, timeout: float | urllib3.Timeout, stream: bool = False,
                ) -> urllib3.BaseHTTPResponse:
        """One request; urllib3's own retries are off (the caller decides what is worth trying again).
        ``stream``: the body is read as it comes (a watch), else it is read whole before this returns."""
        url = self.info.server.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
        sent = {"User-Agent": self.user_agent, **self.info.as_http_headers(), **headers}
        return self.pool.request(method, url, body=body, headers=sent, timeout=timeout, retries=False,
                                 redirect=False, preload_content=not stream)

    def relogin(self, stale: kopf.ConnectionInfo) -> bool:
        """After a 401: log in again (a rotated service-account token, an expired plugin token), once for all
        the calls that met the same stale credentials. Whether the credentials changed."""
        with self._lock:
            if self.info is not stale:
                return True  # another call logged in again meanwhile
            fresh = login()
            if fresh == stale:
                return False
            self.pool, self.info = _pool(fresh, self.maxsize), fresh
            return True


def _pool(info: kopf.ConnectionInfo, maxsize: int) -> urllib3.PoolManager:
    context = info.as_ssl_context()
    # urllib3 sets the context's verification from cert_reqs on every connection: say the same as the context.
    tls: dict[str, Any] = {"ssl_context": context, "cert_reqs": "CERT_NONE" if info.insecure else "CERT_REQUIRED"}
    if info.insecure:
        tls["assert_hostname"] = False
    if info.proxy_url:
        return urllib3.ProxyManager(info.proxy_url, num_pools=1, maxsize=maxsize, block=False, **tls)
    return urllib3.PoolManager(num_pools=1, maxsize=maxsize, block=False, **tls)
