"""Throwaway credentials for rehearsing a secure deployment on loopback.

``fedbcs flower-local --tls`` runs every Flower API over TLS, and ``--auth`` makes the
SuperLink accept only SuperNodes whose public keys were registered with it. Both need
credentials that nobody should reuse, so this module makes fresh ones for one deployment,
in a folder that is removed with it:

- :func:`write_tls_files`: a certificate authority (self-signed, valid for a short time)
  and a server certificate it signed for ``localhost`` and ``127.0.0.1`` (its
  SubjectAlternativeName), which the SuperLink and the SuperNodes' runtime APIs present;
  every client (SuperNode, SuperExec, ``flwr``) trusts only that CA.
- :func:`write_node_keys`: one EC key pair per SuperNode on NIST P-384, in the OpenSSH
  formats Flower 1.42 reads (``flower-supernode --auth-supernode-private-key`` loads an
  OpenSSH private key, ``flwr supernode register`` an OpenSSH public key).

Private keys are written with mode 0600 and never over an existing file. A real
deployment brings its own certificates and keys (docs/deployment.md).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The names the loopback deployment's clients dial: flwr and the SuperNodes use the IP.
SERVER_DNS_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1",)
# P-256 for the TLS keys (fast, accepted by every TLS stack); P-384 for SuperNode keys,
# the curve Flower's guide uses (``ssh-keygen -t ecdsa -b 384``).
TLS_CURVE = ec.SECP256R1()
NODE_CURVE = ec.SECP384R1()
PRIVATE_MODE = 0o600  # a private key file: its owner may read and write it, nobody else


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a deployment's TLS: ``ca_certificate`` is what clients trust;
    ``certificate`` and ``private_key`` are what the servers present."""

    ca_certificate: Path
    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's key pair: ``private_key`` (OpenSSH, mode 0600) stays with the node;
    ``public_key`` (an OpenSSH line) is what the SuperLink's operator registers."""

    private_key: Path
    public_key: Path


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a new file created with ``mode`` (never over an existing one)."""
    with open(path, "xb", opener=lambda name, flags: os.open(name, flags, mode)) as file:
        file.write(data)


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    valid_for: datetime.timedelta,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """A certificate of ``key`` for ``subject``, signed by ``issuer_key`` (self-signed
    when ``issuer`` is None), valid from now for ``valid_for``."""
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + valid_for)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage extension with ``allowed`` on and every other use off."""
    uses = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{use: allowed.get(use, False) for use in uses})


def write_tls_files(
    folder: Path, valid_for: datetime.timedelta = datetime.timedelta(days=1)
) -> TlsFiles:
    """Write a throwaway CA and a server certificate it signed into ``folder``.

    Args:
        folder: where ``ca.crt``, ``server.crt`` and ``server.key`` go (created if need
            be); the CA's own key is never written, so nothing else can be signed with it.
        valid_for: how long both certificates are valid from now (default one day); a
            deployment must end before they expire.

    Raises:
        FileExistsError: ``folder`` already holds one of the files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(TLS_CURVE)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedbcs flower-local CA")])
    ca = _certificate(
        ca_name,
        ca_key,
        None,
        ca_key,
        valid_for,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (_key_usage(key_cert_sign=True, crl_sign=True), True),
        ],
    )
    server_key = ec.generate_private_key(TLS_CURVE)
    names = [x509.DNSName(name) for name in SERVER_DNS_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    server = _certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_DNS_NAMES[0])]),
        server_key,
        ca,
        ca_key,
        valid_for,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(digital_signature=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName(names), False),
        ],
    )
    files = TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    _write_new(files.ca_certificate, ca.public_bytes(serialization.Encoding.PEM))
    _write_new(files.certificate, server.public_bytes(serialization.Encoding.PEM))
    _write_new(
        files.private_key,
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        PRIVATE_MODE,
    )
    return files


def write_node_keys(folder: Path, count: int) -> list[NodeKey]:
    """Write ``count`` SuperNode key pairs into ``folder``: ``supernode-<i>`` (the
    OpenSSH private key, mode 0600) and ``supernode-<i>.pub`` (its OpenSSH public key),
    for i = 0 … count-1.

    Raises:
        FileExistsError: ``folder`` already holds one of the files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for index in range(count):
        key = ec.generate_private_key(NODE_CURVE)
        pair = NodeKey(folder / f"supernode-{index}", folder / f"supernode-{index}.pub")
        _write_new(
            pair.private_key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            PRIVATE_MODE,
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write_new(pair.public_key, public + f" fedbcs-supernode-{index}\n".encode())
        keys.append(pair)
    return keys
