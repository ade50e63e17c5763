"""Every port the operator listens on, checked before kopf starts.

A port in use used to surface deep inside kopf's start-up (a traceback, "will try again in 60 seconds") and
the operator ran on without metrics. ``stockade run`` now binds each port it is about to use first and
stops at once, naming the port and the setting that chose it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Listener:
    what: str      # "metrics", "liveness", ...
    setting: str   # what a user changes: STOCKADE_METRICS_PORT, --liveness
    host: str
    port: int
    off: str = ""  # how to turn it off, when it can be

    def problem(self, err: OSError) -> str:
        where = f"[{self.host}]" if ":" in self.host else self.host
        hint = f"set {self.setting} to a free port" + (f" ({self.off})" if self.off else "")
        return f"stockade: the {self.what} port {self.port} ({self.setting}) cannot be used on {where}: " \
               f"{err.strerror or err}; {hint}"


class PortInUse(Exception):
    """A listener's port cannot be bound; the message is one line, for people."""


def liveness_listener(url: str | None) -> Listener | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.port is None:
        return None
    return Listener("liveness", "--liveness", parts.hostname or "0.0.0.0", parts.port, "--liveness '' turns it off")


def listeners(liveness: str | None) -> list[Listener]:
    """What the operator will listen on with the current STOCKADE_* settings and the liveness URL.

    Ports chosen at random (a local webhook without STOCKADE_WEBHOOK_PORT) are not listed: they are free by
    construction. The signal endpoint is listed only when it will start (it needs a token or a client CA).
    """
    from stockade.admission.config import AdmissionSettings
    from stockade.detect.config import DetectSettings
    from stockade.settings import Settings

    found: list[Listener] = []
    config = Settings()
    if config.metrics_port:
        # prometheus_client's start_http_server listens on every interface.
        found.append(Listener("metrics", "STOCKADE_METRICS_PORT", "0.0.0.0", config.metrics_port, "0 turns it off"))
    live = liveness_listener(liveness)
    if live is not None:
        found.append(live)
    if config.ready_port:
        found.append(Listener("readiness", "STOCKADE_READY_PORT", config.ready_host, config.ready_port,
                              "0 turns it off"))
    admission = AdmissionSettings()
    in_cluster = bool(admission.webhook_service)
    if admission.webhook_port or in_cluster:
        found.append(Listener("admission webhook", "STOCKADE_WEBHOOK_PORT",
                              admission.webhook_host or ("0.0.0.0" if in_cluster else "127.0.0.1"),
                              admission.webhook_port or 9443))
    detect = DetectSettings()
    if detect.signal_port and (detect.token() is not None or detect.signal_client_ca):
        found.append(Listener("signal", "STOCKADE_SIGNAL_PORT", detect.signal_host, detect.signal_port,
                              "0 turns it off"))
    return found


def check(found: list[Listener]) -> None:
    """Bind each port as its server will (SO_REUSEADDR, as aiohttp and http.server do, so that a socket in
    TIME_WAIT from the last run is no conflict). Raises PortInUse for the first that cannot be bound."""
    for listener in found:
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((listener.host, listener.port))
                sock.listen(1)
            except OSError as err:
                raise PortInUse(listener.problem(err)) from None
