"""The sampler behind TLS (mutual when asked) and a bearer token: the right client gets in,
every other is refused with a status that says why, and health stays open."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.cli import main
from services.sampler.client import SamplerClient, SamplerError
from services.sampler.process import SamplerProcess
from services.sampler.security import ClientSecurity, ServerSecurity
from tests.test_sampler_service import MODELS, generator, held_versions  # noqa: F401

pytestmark = pytest.mark.services


def _certificate(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a token file."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edis test CA")])
    ca = _certificate("edis test CA", ca_key, ca_name, ca_key, ca=True)
    files = {"ca": ca}
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[who] = _certificate(who, key, ca_name, ca_key, ca=False)
        (root / f"{who}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    paths = {}
    for who, cert in files.items():
        paths[who] = root / f"{who}.pem"
        paths[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.update(server_key=root / "server.key", client_key=root / "client.key",
                 token=root / "token", wrong_token=root / "wrong")
    paths["token"].write_text("s3cret-token\n")
    paths["wrong_token"].write_text("not-the-token\n")
    return paths


def status_code(client: SamplerClient) -> grpc.StatusCode | None:
    try:
        client.status(timeout=5)
    except SamplerError as err:
        return err.code
    return None


def test_tls_and_a_token_let_the_right_client_in_and_refuse_every_other(
        pki, generator, tmp_path):  # noqa: F811
    args = ("--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"]),
            "--token-file", str(pki["token"]))
    with SamplerProcess(*args, log=tmp_path / "sampler.log") as sampler:
        right = ClientSecurity(ca=pki["ca"], token_file=pki["token"])
        with SamplerClient(sampler.address, security=right) as client:
            client.publish(generator, dict.fromkeys(MODELS, 1))
            assert held_versions(client) == dict.fromkeys(MODELS, 1)
            batch = next(client.stream(8, guided=True, max_batches=1))
            assert len(batch.transitions) == 8
        for security, code in (
                (ClientSecurity(ca=pki["ca"]), grpc.StatusCode.UNAUTHENTICATED),
                (ClientSecurity(ca=pki["ca"], token_file=pki["wrong_token"]),
                 grpc.StatusCode.UNAUTHENTICATED)):
            with SamplerClient(sampler.address, security=security, connect_timeout=5) as other:
                assert status_code(other) == code
                with pytest.raises(SamplerError, match="UNAUTHENTICATED"):
                    other.publish(generator, dict.fromkeys(MODELS, 2))
                assert other.health() == "SERVING"      # orchestrators need no token
        with SamplerClient(sampler.address, connect_timeout=3) as plaintext:
            assert status_code(plaintext) == grpc.StatusCode.UNAVAILABLE
        # the CLI takes the same options
        assert main(["sampler", "status", sampler.address, "--sampler-ca", str(pki["ca"]),
                     "--sampler-token-file", str(pki["token"])]) == 0
        assert main(["sampler", "status", sampler.address, "--sampler-ca",
                     str(pki["ca"])]) == 1


def test_mutual_tls_needs_a_client_certificate_from_the_ca(pki, tmp_path):
    args = ("--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"]),
            "--tls-client-ca", str(pki["ca"]))
    with SamplerProcess(*args, log=tmp_path / "sampler.log") as sampler:
        with SamplerClient(sampler.address, connect_timeout=3,
                           security=ClientSecurity(ca=pki["ca"])) as anonymous:
            assert status_code(anonymous) == grpc.StatusCode.UNAVAILABLE
        known = ClientSecurity(ca=pki["ca"], cert=pki["client"], key=pki["client_key"])
        with SamplerClient(sampler.address, security=known) as client:
            assert status_code(client) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cert": Path("c.pem")}, "--tls-cert and --tls-key go together"),
    ({"client_ca": Path("ca.pem")}, "needs --tls-cert"),
])
def test_incomplete_tls_options_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServerSecurity(**kwargs)


def test_a_token_file_that_is_empty_or_missing_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, message in ((empty, "must hold one token"), (tmp_path / "none", "cannot be read")):
        with pytest.raises(ValueError, match=message):
            ServerSecurity(token_file=path).interceptors()
