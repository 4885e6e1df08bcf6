"""The S3 store's error mapping: every botocore or network error becomes an
``s3fuse.errors`` class with a one-line message naming the operation, bucket and key,
scrubbed of credentials. A helper module of ``s3.py`` (which stays the only boto3 user:
this module only names botocore's exception classes).

``S3Errors`` is a part of ``s3.S3Store`` (its base class): its methods use the store's
``bucket``, ``endpoint`` (for messages) and ``_session`` (the credentials to scrub).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import urllib3.exceptions
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
)

from s3fuse.errors import (
    AccessDenied,
    InvalidKey,
    NoSuchBucket,
    NoSuchKey,
    NotSupported,
    PreconditionFailed,
    StoreError,
    TransientStoreError,
)

_ACCESS_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
    "RequestTimeTooSkewed", "InvalidSecurity", "Forbidden",
}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequests", "TooManyRequestsException", "RequestTimeout", "InternalError",
    "ServiceUnavailable", "OperationAborted", "ConditionalRequestConflict",
    "NoSuchUpload",  # a multipart upload vanished under us: redo the whole put
    "RequestThrottled", "BandwidthLimitExceeded",
}
_NETWORK_ERRORS = (
    EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError, ReadTimeoutError,
    urllib3.exceptions.HTTPError, ConnectionError, TimeoutError,
)


def _looks_like_network(exc: BaseException) -> bool:
    """botocore's connection-level errors (ConnectionClosedError, ResponseStreamingError,
    IncompleteReadError, ...) share no base class beyond BotoCoreError."""
    name = type(exc).__name__
    return isinstance(exc, BotoCoreError) and any(
        word in name for word in ("Connection", "Read", "Streaming", "HTTPClient"))


class S3Errors:
    """The error half of ``S3Store`` (see the module docstring)."""

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"

    def _scrub(self, text: str) -> str:
        """One line of at most 200 characters, with any credential string removed."""
        text = " ".join(str(text).split())[:200]
        with contextlib.suppress(Exception):
            creds = self._session.get_credentials()
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                for secret in (frozen.secret_key, frozen.token):
                    # (Real secrets are long; replacing a 1-character test secret
                    # would only garble the message.)
                    if secret and len(secret) >= 8:
                        text = text.replace(secret, "***")
        return text

    def _map(self, exc: BaseException, op: str, key: str | None = None, *,
             conditional: bool = False, version_id: str | None = None) -> BaseException:
        """The ``s3fuse.errors`` exception for a botocore/network error."""
        where = f"{op} {self._where(key)}"
        if version_id is not None:
            where += f" version {version_id}"
        if isinstance(exc, ClientError):
            mapped = self._map_client_error(exc, where, conditional=conditional)
            status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
            code = str((exc.response.get("Error", {}) or {}).get("Code", "") or "")
            if version_id is not None and (
                    status == 405 or code in ("NoSuchVersion", "MethodNotAllowed")
                    or (status == 400 and code in ("InvalidArgument", "400", ""))):
                # a delete marker (405), an unknown or malformed version id (404/400)
                return NoSuchKey(str(mapped))
            return mapped
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError,
                            CredentialRetrievalError)):
            return AccessDenied(
                f"{where}: no usable AWS credentials (environment, profile or instance role)")
        if isinstance(exc, ReadTimeoutError):
            return TransientStoreError(f"{where}: timed out waiting for {self.endpoint}")
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError,
                            ProxyConnectionError)):
            return TransientStoreError(f"{where}: cannot reach {self.endpoint}")
        if isinstance(exc, _NETWORK_ERRORS) or _looks_like_network(exc):
            return TransientStoreError(f"{where}: connection to {self.endpoint} failed "
                                       f"({type(exc).__name__})")
        if isinstance(exc, BotoCoreError):
            return StoreError(f"{where}: {self._scrub(str(exc))}")
        return exc

    def _map_client_error(self, exc: ClientError, where: str, *,
                          conditional: bool) -> StoreError:
        mapped = self._client_error_type(exc, where, conditional=conditional)
        status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
        mapped.http_status = status or None
        return mapped

    def _client_error_type(self, exc: ClientError, where: str, *,
                           conditional: bool) -> StoreError:
        error = exc.response.get("Error", {}) or {}
        code = str(error.get("Code", "") or "")
        status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode") or 0
        message = self._scrub(error.get("Message", "") or "")
        detail = f"{where}: {code or status}"
        if message and message != code:
            detail += f" ({message})"
        if code == "NoSuchBucket":
            return NoSuchBucket(detail)
        if code in _TRANSIENT_CODES:
            return TransientStoreError(detail)
        if code in ("NoSuchKey", "NotFound") or status == 404:
            # S3 answers If-Match on a missing key with 404: the condition failed.
            return PreconditionFailed(detail) if conditional else NoSuchKey(detail)
        if code in _ACCESS_CODES or status in (401, 403):
            return AccessDenied(detail)
        if code == "PreconditionFailed" or status == 412:
            return PreconditionFailed(detail)
        if code == "NotImplemented" or status == 501:
            return NotSupported(detail)
        if status == 409 or status == 429 or status >= 500:
            return TransientStoreError(detail)
        if code == "KeyTooLongError":
            return InvalidKey(detail)
        return StoreError(detail)

    @contextlib.contextmanager
    def _op(self, op: str, key: str | None = None, *, conditional: bool = False,
            version_id: str | None = None) -> Iterator[None]:
        """Run a request, translating botocore and network errors (``version_id``:
        the request names a version, whose absence is NoSuchKey)."""
        try:
            yield
        except (ClientError, BotoCoreError, *_NETWORK_ERRORS) as exc:
            raise self._map(exc, op, key, conditional=conditional,
                            version_id=version_id) from exc
