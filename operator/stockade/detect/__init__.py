"""Detection and response: signals (API watches, Falco, Prometheus, a generic endpoint) -> violations
(``rules``) -> the responder (``respond``, with the ladder's ``rungs`` and ``release``). One package, so the
sources and the responder import each other inside it and nothing here imports the reconciler or the app.
"""
