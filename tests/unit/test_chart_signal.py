"""The chart's signal endpoint: HTTPS by default with a certificate the chart makes (or takes), the bind
address, and plain HTTP only when asked for."""

from __future__ import annotations

import base64
import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .test_chart import container, env, one, render, template

SERVICE_NAMES = ["stockade-signal", "stockade-signal.stockade-system", "stockade-signal.stockade-system.svc",
                 "stockade-signal.stockade-system.svc.cluster.local"]


def _pem(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    public = ca.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        assert cert.signature_hash_algorithm is not None
        public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey) and cert.signature_hash_algorithm is not None
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    return cert.issuer == ca.subject


def test_https_by_default_with_a_certificate_for_the_service_names() -> None:
    docs = render()
    secret = one(docs, "Secret", "stockade-signal-tls")
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(_pem(secret, "tls.crt"))
    ca = x509.load_pem_x509_certificate(_pem(secret, "ca.crt"))
    assert _signed_by(cert, ca), "the serving certificate verifies against the CA callers are given"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(SERVICE_NAMES)
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=365)
    assert _pem(secret, "tls.key").startswith(b"-----BEGIN")
    values = env(docs)
    assert values["STOCKADE_SIGNAL_TLS"] == "true"
    assert values["STOCKADE_SIGNAL_HOST"] == "0.0.0.0"
    assert values["STOCKADE_SIGNAL_CERT_DIR"] == "/etc/stockade/signal-tls"
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "signal-tls")
    assert mount == {"name": "signal-tls", "mountPath": "/etc/stockade/signal-tls", "readOnly": True}
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "signal-tls", "secret": {"secretName": "stockade-signal-tls"}} in volumes


def test_a_certificate_of_your_own_is_mounted_and_none_is_made() -> None:
    docs = render("signal.tls.secretName=corp-signal-cert")
    secrets = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
    assert "stockade-signal-tls" not in secrets and "corp-signal-cert" not in secrets
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "signal-tls", "secret": {"secretName": "corp-signal-cert"}} in volumes


def test_plain_http_only_when_asked_for_and_the_bind_address_is_a_value() -> None:
    docs = render("signal.tls.enabled=false", "signal.host=::")
    values = env(docs)
    assert values["STOCKADE_SIGNAL_TLS"] == "false"
    assert values["STOCKADE_SIGNAL_HOST"] == "::"
    assert "STOCKADE_SIGNAL_CERT_DIR" not in values
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "stockade-signal-tls"]
    assert "signal-tls" not in [m["name"] for m in container(docs)["volumeMounts"]]
    off = render("signal.enabled=false")
    assert "STOCKADE_SIGNAL_TLS" not in env(off)
    assert not [d for d in off if d["kind"] == "Secret" and "signal" in d["metadata"]["name"]]


def test_schema_rejects_wrong_signal_values() -> None:
    for value in ("signal.tls.secretName=Not_A_Name", "signal.host=a b", "signal.tls.enabled=maybe",
                  "signal.tls.unknown=1"):
        result = template(value)
        assert result.returncode != 0 and "schema" in result.stderr, value
