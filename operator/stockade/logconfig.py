"""The operator's log: kopf's handler and formatters, plus what a security team needs from them.

JSON lines carry the logger's name (``logger``) and the structured fields of :mod:`stockade.audit`
(kopf's JSON formatter is python-json-logger's, which writes every ``extra=`` field). Noise goes: kopf's
liveness endpoint's access lines (kubelet asks every few seconds), kopf's warning for an Event it could
not post into a namespace being deleted or gone (an AgentRun deleted with its namespace: expected), kopf's
ERROR line for each refusal of Stockade's webhooks (a refusal is the webhook doing its job; the admission
recorder logs it with its fields) and, unless verbose, kopf's line per handler call (the reconciler logs
what it changes).
"""

from __future__ import annotations

import logging
import re

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
# Lines that are expected, not problems: (logger, a pattern of the message), down to DEBUG.
EXPECTED = (
    ("kopf._core.engines.posting", r"because it is being terminated"),
    ("kopf._core.engines.posting", r'Code: 404\. Message: namespaces "[^"]+" not found'),
    ("kopf.objects", r"^Webhook '[^']+' failed permanently: "),  # kopf.AdmissionError: a refusal
)


class Demote(logging.Filter):
    """On a logger: a line matching ``text`` is logged at DEBUG (so dropped unless the logger logs DEBUG)."""

    def __init__(self, logger: logging.Logger, text: str) -> None:
        super().__init__()
        self.logger = logger
        self.text = text
        self.pattern = re.compile(text)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not self.pattern.search(record.getMessage()):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.logger.isEnabledFor(logging.DEBUG)


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
    for name, text in EXPECTED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Demote) and f.text == text for f in logger.filters):
            logger.addFilter(Demote(logger, text))
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
