"""The signal endpoint with mutual TLS instead of a token: a client certificate from the CA is enough,
and a caller without one never gets past the handshake."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stockade.detect.config import DetectSettings
from stockade.detect.server import SignalServer
from stockade.store import Store

from .fakes import FakeKube
from .test_detect_server import Queue, ssh_event


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("stockade-test-ca", ca_key, None, ca=True)
    _write(tmp_path / "ca", ca)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(tmp_path / name, _cert(name, key, (ca.subject, ca_key), server=server), key)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    _write(tmp_path / "rogue", _cert("rogue", rogue_key, None), rogue_key)
    return tmp_path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_client_certificate_authenticates_and_its_absence_is_refused(pki: Path) -> None:
    port = _free_port()
    settings = DetectSettings(_env_file=None, signal_host="127.0.0.1", signal_port=port, signal_tls=True,  # type: ignore[call-arg]
                              signal_tls_cert=pki / "server.crt", signal_tls_key=pki / "server.key",
                              signal_client_ca=pki / "ca.crt")
    server = SignalServer(settings, Store(), FakeKube(), Queue(),  # type: ignore[arg-type]
                          now=lambda: "t")
    assert server.enabled() is None, "mTLS alone is a way to authenticate"

    def client_context(name: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        if name:
            context.load_cert_chain(pki / f"{name}.crt", pki / f"{name}.key")
        return context

    async def post(name: str | None) -> int:
        url = f"https://127.0.0.1:{port}/falco"
        async with aiohttp.ClientSession() as session, \
                session.post(url, json=ssh_event("kube-system", "x"), ssl=client_context(name)) as resp:
            return resp.status

    async def main() -> None:
        await server.start()
        try:
            assert await post("client") == 404, "authenticated, then refused: no AgentRun owns kube-system"
            for stranger in (None, "rogue"):
                with pytest.raises(aiohttp.ClientError):
                    await post(stranger)
        finally:
            await server.stop()

    asyncio.run(main())
