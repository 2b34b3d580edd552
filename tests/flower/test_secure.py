"""The throwaway credentials of ``fedbcs flower-local --tls --auth`` (what
:mod:`fedbcs_fl.flower.secure` writes), and how the command asks for them. A deployment
that runs over them is in tests/flower/test_flower.py."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from contextlib import suppress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from flwr.cli.supernode.register import try_load_public_key

from fedbcs_fl.cli import main
from fedbcs_fl.flower import local
from fedbcs_fl.flower.secure import write_node_keys, write_tls_files

from .._tiny import tiny_argv


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _verifier(ca: x509.Certificate, name: x509.GeneralName):
    return PolicyBuilder().store(Store([ca])).build_server_verifier(name)


def test_the_server_certificate_is_signed_by_the_ca_for_localhost_and_127_0_0_1(tmp_path):
    lifetime = datetime.timedelta(hours=2)
    files = write_tls_files(tmp_path, lifetime)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "server.crt", "server.key"]
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    for name in (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")):
        assert _verifier(ca, name).verify(server, []) == [server, ca]
    with pytest.raises(VerificationError):
        _verifier(ca, x509.DNSName("example.org")).verify(server, [])
    for certificate in (ca, server):
        valid = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        assert valid == lifetime
    key = serialization.load_pem_private_key(files.private_key.read_bytes(), password=None)
    assert key.public_key() == server.public_key()
    assert _mode(files.private_key) == 0o600
    assert _mode(files.certificate) & 0o077 != 0o077  # the certificates are public


def handshake(port: int, context: ssl.SSLContext) -> dict:
    """The certificate the server on 127.0.0.1:``port`` presents, once ``context`` has
    verified it for that address."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        return tls.getpeercert()


def test_a_tls_client_trusts_the_server_only_through_the_ca(tmp_path):
    """Real handshakes (OpenSSL, as uvicorn and gRPC use) against the written files."""
    files = write_tls_files(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.certificate, files.private_key)
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            for _ in range(2):
                connection, _ = listener.accept()
                # The second client aborts the handshake.
                with suppress(ssl.SSLError), connection:
                    server_context.wrap_socket(connection, server_side=True).close()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        port = listener.getsockname()[1]
        trusting = ssl.create_default_context(cafile=files.ca_certificate)
        assert ("IP Address", "127.0.0.1") in handshake(port, trusting)["subjectAltName"]
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(port, ssl.create_default_context())  # the system's CAs only
        server.join(timeout=10)
        assert not server.is_alive()


def test_supernode_keys_are_p384_openssh_pairs_that_flower_loads(tmp_path):
    keys = write_node_keys(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "supernode-0",
        "supernode-0.pub",
        "supernode-1",
        "supernode-1.pub",
    ]
    publics = []
    for key in keys:
        private = serialization.load_ssh_private_key(key.private_key.read_bytes(), None)
        public = serialization.load_ssh_public_key(key.public_key.read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1" and private.public_key() == public
        # What `flwr supernode register` sends the SuperLink, read by Flower's own loader.
        publics.append(try_load_public_key(key.public_key))
        assert _mode(key.private_key) == 0o600
    assert publics[0] != publics[1]


def test_credentials_are_never_written_over_existing_files(tmp_path):
    keys = write_node_keys(tmp_path, 1)
    before = keys[0].private_key.read_bytes()
    with pytest.raises(FileExistsError):
        write_node_keys(tmp_path, 1)
    assert keys[0].private_key.read_bytes() == before
    ca = write_tls_files(tmp_path / "tls").ca_certificate
    before = ca.read_bytes()
    with pytest.raises(FileExistsError):
        write_tls_files(tmp_path / "tls")
    assert ca.read_bytes() == before


def test_a_deployment_with_auth_but_without_tls_is_refused_before_it_starts(tmp_path):
    # Starting anything (even the watchdog) here fails the test: it is not marked e2e.
    with pytest.raises(ValueError, match="auth needs tls"):
        local.LocalDeployment(2, {}, tmp_path / "logs", auth=True)
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("flags", "tls", "auth"),
    [([], False, False), (["--tls"], True, False), (["--auth"], True, True)],
)
def test_flower_local_auth_turns_tls_on(monkeypatch, tmp_path, flags, tls, auth):
    asked = {}

    def run_local(config, clients, out, fail_partition, timeout, **security):
        asked.update(security)
        return {
            "ok": False,
            "run_id": None,
            "status": "not started",
            "rounds_completed": 0,
            "logs": "",
        }

    monkeypatch.setattr(local, "run_local", run_local)
    command = ["flower-local", *tiny_argv("fedavg"), "--out", str(tmp_path), *flags]
    assert main(command) == 1
    assert asked == {"tls": tls, "auth": auth}
