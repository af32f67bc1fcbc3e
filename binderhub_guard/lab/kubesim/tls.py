"""A throwaway certificate authority and server certificate for the simulator.

A cluster's kubeconfig (or in-cluster config) names the cluster's own CA, so each
kubernetes_asyncio `ApiClient` loads that one certificate.  Without a CA it loads the whole
system trust store instead, tens of milliseconds of CPU and about a MiB of allocations per
client, and kubernetes_asyncio makes a client for every watch loop.  Serving HTTPS under a CA
made at start-up keeps a hub on the simulator paying what it pays on a cluster.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# longer than any dev hub runs; nothing outlives the simulator process that made it
_VALIDITY = datetime.timedelta(days=365)
# tolerates a client clock slightly behind this one
_BACKDATE = datetime.timedelta(minutes=5)


def server_tls(host: str) -> tuple[ssl.SSLContext, bytes]:
    """A server context for `host` under a CA made just now; returns it and the CA's PEM."""
    ca_pem, cert_pem, key_pem = server_certificate(host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain reads only files: the key is on disk just long enough for that
    with tempfile.TemporaryDirectory(prefix="kubesim-tls-") as directory:
        cert_path = Path(directory, "server.pem")
        key_path = Path(directory, "server.key")
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context, ca_pem


def server_certificate(host: str, common_name: str = "kubesim") -> tuple[bytes, bytes, bytes]:
    """A CA made just now and a server certificate under it for `host`, 127.0.0.1 and
    localhost: (CA PEM, certificate PEM, private key PEM)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca_cert = (
        _certificate(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    server_cert = (
        _certificate(server_name, ca_name, server_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_alt_names(host)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (
        ca_cert.public_bytes(serialization.Encoding.PEM),
        server_cert.public_bytes(serialization.Encoding.PEM),
        key_pem,
    )


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a server signs its handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_names(host: str) -> list[x509.GeneralName]:
    """127.0.0.1 and localhost, which clients on this machine use, and the listen address."""
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    else:
        if address != ipaddress.ip_address("127.0.0.1"):
            names.append(x509.IPAddress(address))
    return names
