"""Who may talk to the sampler: TLS (mutual, when a client CA is given) and a shared bearer
token in every call's metadata (`authorization: Bearer TOKEN`).

The server compares tokens in constant time and refuses a call without the right one with
UNAUTHENTICATED, except the standard health service (grpc.health.v1), which stays open so
that orchestrators can probe a sampler they hold no token for. Tokens are read from files
(a compose or Kubernetes secret), never from the command line, where `ps` would show them.
Without any of these options the sampler serves plaintext without a token, which is what
its default bind address, 127.0.0.1, is for.
"""

from __future__ import annotations

import argparse
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.sampler.wire import CHANNEL_OPTIONS

OPEN_METHODS = ("/grpc.health.v1.Health/",)
TOKEN_KEY = "authorization"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read ({err.strerror})") from err


def read_token(path: Path) -> str:
    token = _read(path, "the token file").decode().strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"the token file {path} must hold one token (no spaces), got "
                         f"{'nothing' if not token else 'several words'}")
    return token


@dataclass(frozen=True)
class ServerSecurity:
    """`edis sampler serve --tls-cert --tls-key [--tls-client-ca] [--token-file]`."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    token_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")

    def credentials(self) -> grpc.ServerCredentials | None:
        if self.cert is None or self.key is None:
            return None
        pair = (_read(self.key, "--tls-key"), _read(self.cert, "--tls-cert"))
        client_ca = None if self.client_ca is None else _read(self.client_ca, "--tls-client-ca")
        return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                           require_client_auth=client_ca is not None)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [] if self.token_file is None else [TokenCheck(read_token(self.token_file))]


@dataclass(frozen=True)
class ClientSecurity:
    """The client's side: `--sampler-ca` (TLS on; the CA that signed the sampler's
    certificate), `--sampler-cert` / `--sampler-key` (mutual TLS), `--sampler-token-file`,
    `--sampler-server-name` (the name its certificate carries, if not the address's host)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--sampler-cert and --sampler-key go together")
        if self.cert is not None and self.ca is None:
            raise ValueError("--sampler-cert (mutual TLS) needs --sampler-ca")

    def channel(self, address: str) -> grpc.Channel:
        if self.ca is None:
            return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "--sampler-ca"),
            private_key=None if self.key is None else _read(self.key, "--sampler-key"),
            certificate_chain=None if self.cert is None else _read(self.cert, "--sampler-cert"))
        options = list(CHANNEL_OPTIONS)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(address, credentials, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token_file is None:
            return ()
        return ((TOKEN_KEY, f"Bearer {read_token(self.token_file)}"),)


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses every call but the health service's unless it carries the bearer token."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        if self._authorized(details.invocation_metadata or ()):
            return handler
        return _refusing(handler)

    def _authorized(self, metadata: Sequence[tuple[str, Any]]) -> bool:
        given = [v for k, v in metadata if k == TOKEN_KEY]
        value = given[0] if len(given) == 1 else ""
        value = value.encode() if isinstance(value, str) else bytes(value)
        return hmac.compare_digest(value, self._expected)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong bearer token: give the client the sampler's "
                            "token file (--sampler-token-file)")

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    make = kinds[handler.request_streaming, handler.response_streaming]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", type=Path, help="the server's certificate (PEM): TLS on")
    parser.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path,
                        help="accept only clients with a certificate signed by this CA "
                             "(mutual TLS)")
    parser.add_argument("--token-file", type=Path,
                        help="require this bearer token (one line) on every call but health")


def server_security(args: argparse.Namespace) -> ServerSecurity:
    return ServerSecurity(args.tls_cert, args.tls_key, args.tls_client_ca, args.token_file)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sampler-ca", type=Path,
                        help="the CA of the sampler's TLS certificate (PEM): TLS on")
    parser.add_argument("--sampler-cert", type=Path,
                        help="this client's certificate for mutual TLS (PEM)")
    parser.add_argument("--sampler-key", type=Path, help="its private key (PEM)")
    parser.add_argument("--sampler-token-file", type=Path,
                        help="the sampler's bearer token, one line")
    parser.add_argument("--sampler-server-name",
                        help="the name in the sampler's certificate, if not the address's host")


def client_security(args: argparse.Namespace) -> ClientSecurity:
    return ClientSecurity(args.sampler_ca, args.sampler_cert, args.sampler_key,
                          args.sampler_token_file, args.sampler_server_name)
