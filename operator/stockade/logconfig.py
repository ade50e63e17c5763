"""The operator's log: kopf's handler and formatters, plus what a security team needs from them.

JSON lines carry the logger's name (``logger``) and the structured fields of :mod:`stockade.audit`
(kopf's JSON formatter is python-json-logger's, which writes every ``extra=`` field). Noise goes: kopf's
liveness endpoint's access lines (kubelet asks every few seconds) and, unless verbose, kopf's line per
handler call (the reconciler logs what it changes).
"""

from __future__ import annotations

import logging

import kopf

# kopf's JSON formatter (python-json-logger, plus kopf's object reference and severity); kopf exports only
# the LogFormat names, which offer no way to add the logger's name.
from kopf._core.actions.loggers import ObjectFormatter, ObjectJsonFormatter

from stockade.audit import ContextFields

JSON_FIELDS = "%(name)s %(message)s"
RENAMED = {"name": "logger"}
# The only aiohttp server with an access log is kopf's liveness endpoint (the operator's own servers
# have none): its lines are one per probe and say nothing.
QUIET = {"aiohttp.access": logging.WARNING}


def configure(*, json_logs: bool, verbose: bool) -> None:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL)
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, ObjectFormatter):
            continue  # not kopf's handler
        if json_logs:
            handler.setFormatter(ObjectJsonFormatter(JSON_FIELDS, rename_fields=RENAMED))
        handler.addFilter(ContextFields())
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
