"""Detection: signals (API watches, Falco, Prometheus, a generic endpoint) -> violations -> respond."""
