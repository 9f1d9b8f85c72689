"""AWS Signature Version 4: signing and verifying, byte for byte as botocore builds it.

The canonical request is botocore's (``botocore.auth.SigV4Auth.canonical_request``): the method; the path
with dot segments and empty segments removed, then percent-encoded once more (the wire path is already
encoded, so non-S3 services see it double-encoded; S3 and the artifact store use the wire path as it is);
the query string split on ``&``, each key and value re-encoded with AWS's unreserved set and sorted; the
signed headers, lower-cased, values trimmed and inner whitespace collapsed, repeated headers joined with
``,``; the signed header list; the payload's SHA-256 (or ``x-amz-content-sha256`` when sent). The string to
sign adds ``X-Amz-Date`` and the credential scope ``date/region/service/aws4_request``.

Verification answers like AWS does, with a 403 and AWS's error code, so botocore raises the same
``ClientError``: ``MissingAuthenticationTokenException`` (no ``Authorization``), ``IncompleteSignatureException``
(a malformed one), ``UnrecognizedClientException`` (unknown access key), ``InvalidSignatureException``
(anything else: bad signature, wrong scope, clock skew over 15 minutes). Query-string authentication
(presigned URLs, S3 style) answers ``AccessDenied`` as S3 does.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote, urlsplit

from localcloud.awsapi.errors import ApiError

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_SKEW_S = 15 * 60
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
UNSIGNED_HEADERS = frozenset(
    {
        "authorization",
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)

Headers = Mapping[str, str] | Iterable[tuple[str, str]]

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)


@dataclass(frozen=True)
class Verified:
    """Who signed a request, for what: the credential scope of a verified signature."""

    access_key: str
    date: str
    region: str
    service: str


def amz_date(now: float) -> str:
    return time.strftime(AMZ_DATE_FORMAT, time.gmtime(now))


def parse_amz_date(value: str) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(value, AMZ_DATE_FORMAT)))


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 plus AWS's removal of empty segments (botocore.utils.remove_dot_segments)."""
    if not path:
        return "/"
    out: list[str] = []
    for segment in path.split("/"):
        if segment and segment != ".":
            if segment == "..":
                if out:
                    out.pop()
            else:
                out.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and out else ""
    return first + "/".join(out) + last


def canonical_uri(raw_path: str, service: str) -> str:
    if service == "s3":
        return raw_path or "/"
    return quote(remove_dot_segments(raw_path), safe="/~")


def uri_encode(value: str) -> str:
    return quote(value, safe="-_.~")


def canonical_query(raw_query: str, *, drop: str | None = None) -> str:
    pairs: list[tuple[str, str]] = []
    if raw_query:
        for pair in raw_query.split("&"):
            key, _, value = pair.partition("=")
            if drop is not None and unquote(key) == drop:
                continue
            pairs.append((uri_encode(unquote(key)), uri_encode(unquote(value))))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _header_lists(headers: Headers) -> dict[str, list[str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, list[str]] = {}
    for name, value in items:
        out.setdefault(name.lower().strip(), []).append(value)
    return out


def _trim(value: str) -> str:
    return " ".join(value.split())


def canonical_headers(headers: Mapping[str, list[str]], signed: list[str]) -> str:
    return "".join(f"{name}:{','.join(_trim(v) for v in headers.get(name, []))}\n" for name in signed)


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, list[str]],
    signed: list[str],
    payload_hash: str,
    service: str,
    *,
    drop_query: str | None = None,
) -> str:
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path, service),
            canonical_query(raw_query, drop=drop_query),
            canonical_headers(headers, signed),
            ";".join(signed),
            payload_hash,
        ]
    )


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret_key}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, timestamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def _signature(secret_key: str, date: str, region: str, service: str, sts: str) -> str:
    return hmac.new(signing_key(secret_key, date, region, service), sts.encode(), hashlib.sha256).hexdigest()


def _host(url_netloc: str, scheme: str) -> str:
    host = url_netloc.rsplit("@", 1)[-1]
    default = ":443" if scheme == "https" else ":80"
    return host[: -len(default)] if host.endswith(default) else host


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    now: float,
) -> dict[str, str]:
    """The request's headers plus ``Host``, ``X-Amz-Date`` and ``Authorization`` (and, for S3,
    ``X-Amz-Content-SHA256``). ``url`` must be percent-encoded as it goes on the wire."""
    parts = urlsplit(url)
    out = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "x-amz-date")}
    if not any(k.lower() == "host" for k in out):
        out["Host"] = _host(parts.netloc, parts.scheme)
    timestamp = amz_date(now)
    out["X-Amz-Date"] = timestamp
    payload_hash = hashlib.sha256(body).hexdigest()
    if service == "s3":
        out["X-Amz-Content-SHA256"] = payload_hash
    lists = _header_lists(out)
    signed = sorted(name for name in lists if name not in UNSIGNED_HEADERS)
    if "x-amz-content-sha256" in lists:
        payload_hash = lists["x-amz-content-sha256"][0]
    canonical = canonical_request(method, parts.path, parts.query, lists, signed, payload_hash, service)
    scope = f"{timestamp[:8]}/{region}/{service}/aws4_request"
    signature = _signature(
        secret_key, timestamp[:8], region, service, string_to_sign(timestamp, scope, canonical)
    )
    out["Authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    return out


def presign(
    method: str,
    url: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    now: float,
    expires: int,
) -> str:
    """A query-string-signed URL (S3's presigned URL form: only ``host`` signed, ``UNSIGNED-PAYLOAD``)."""
    if not 1 <= expires <= MAX_PRESIGN_EXPIRES_S:
        raise ValueError(f"expires must be 1..{MAX_PRESIGN_EXPIRES_S} seconds, got {expires}")
    parts = urlsplit(url)
    timestamp = amz_date(now)
    scope = f"{timestamp[:8]}/{region}/{service}/aws4_request"
    auth = {
        "X-Amz-Algorithm": ALGORITHM,
        "X-Amz-Credential": f"{access_key}/{scope}",
        "X-Amz-Date": timestamp,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": "host",
    }
    query = "&".join(p for p in [parts.query, "&".join(f"{k}={uri_encode(v)}" for k, v in auth.items())] if p)
    headers = {"host": [_host(parts.netloc, parts.scheme)]}
    canonical = canonical_request(method, parts.path, query, headers, ["host"], UNSIGNED_PAYLOAD, service)
    signature = _signature(
        secret_key, timestamp[:8], region, service, string_to_sign(timestamp, scope, canonical)
    )
    return parts._replace(query=f"{query}&X-Amz-Signature={signature}").geturl()


def _forbidden(code: str, message: str) -> ApiError:
    return ApiError(403, code, message)


def _parse_authorization(value: str) -> dict[str, str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _forbidden(
            "IncompleteSignatureException", f"Unsupported authorization type: {algorithm or value}"
        )
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            fields[key] = val
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not fields.get(k)]
    if missing:
        raise _forbidden(
            "IncompleteSignatureException",
            f"Authorization header requires {', '.join(repr(m) for m in missing)} parameter(s). "
            f"Authorization={value}",
        )
    return fields


def _check_scope(
    credential: str, timestamp: str, region: str | None, services: Iterable[str] | None, code: str
) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise _forbidden(
            "IncompleteSignatureException",
            f"Credential should be scoped to a valid region, not '{credential}'. "
            "Credential should be of the form <key>/<date>/<region>/<service>/aws4_request.",
        )
    key, date, cred_region, service, _ = parts
    if date != timestamp[:8]:
        raise _forbidden(
            code,
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{date}' != '{timestamp[:8]}', from '{timestamp}'.",
        )
    if region is not None and cred_region != region:
        raise _forbidden(code, f"Credential should be scoped to a valid region, not '{cred_region}'.")
    allowed = None if services is None else set(services)
    if allowed is not None and service not in allowed:
        raise _forbidden(code, f"Credential should be scoped to correct service: '{sorted(allowed)[0]}'.")
    return key, date, cred_region, service


def _check_time(timestamp: str, now: float, code: str, *, expires: int | None = None) -> None:
    try:
        signed_at = parse_amz_date(timestamp)
    except ValueError:
        raise _forbidden(
            "IncompleteSignatureException", f"Date must be in ISO-8601 'basic format'. Got '{timestamp}'."
        ) from None
    if expires is not None:
        if now > signed_at + expires:
            raise _forbidden(code, "Request has expired")
        if signed_at > now + MAX_SKEW_S:
            raise _forbidden(code, "Request is not valid yet")
        return
    if abs(now - signed_at) > MAX_SKEW_S:
        earlier = signed_at < now
        bound = now - MAX_SKEW_S if earlier else now + MAX_SKEW_S
        raise _forbidden(
            code,
            f"Signature {'expired' if earlier else 'not yet current'}: {timestamp} is now "
            f"{'earlier' if earlier else 'later'} than {amz_date(bound)} ({amz_date(now)} "
            f"{'-' if earlier else '+'} 15 min.)",
        )


def verify(
    method: str,
    raw_path_with_query: str,
    headers: Headers,
    body: bytes,
    *,
    credentials: Mapping[str, str],
    now: float,
    region: str | None = "us-east-1",
    services: Iterable[str] | None = None,
) -> Verified:
    """Check a request's SigV4 signature (``Authorization`` header, or query-string authentication when
    ``X-Amz-Signature`` is in the query). ``credentials`` maps access key ids to secret keys. Raises
    :class:`ApiError` (403, AWS's code) when it does not hold."""
    raw_path, _, raw_query = raw_path_with_query.partition("?")
    lists = _header_lists(headers)
    query_keys = {
        unquote(p.partition("=")[0]): unquote(p.partition("=")[2]) for p in raw_query.split("&") if p
    }
    if "X-Amz-Signature" in query_keys:
        return _verify_query(
            method, raw_path, raw_query, lists, query_keys, credentials, now, region, services
        )
    auth = lists.get("authorization")
    if not auth:
        raise _forbidden("MissingAuthenticationTokenException", "Missing Authentication Token")
    fields = _parse_authorization(auth[0])
    code = "InvalidSignatureException"
    timestamp = (lists.get("x-amz-date") or [""])[0]
    if not timestamp and lists.get("date"):
        try:
            timestamp = amz_date(parsedate_to_datetime(lists["date"][0]).timestamp())
        except (TypeError, ValueError):
            timestamp = ""
    if not timestamp:
        raise _forbidden(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    _check_time(timestamp, now, code)
    key, date, cred_region, service = _check_scope(fields["Credential"], timestamp, region, services, code)
    secret = credentials.get(key)
    if secret is None:
        raise _forbidden(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed:
        raise _forbidden(code, "'Host' must be a 'SignedHeader' in the AWS Authorization.")
    payload_hash = hashlib.sha256(body).hexdigest()
    sent = lists.get("x-amz-content-sha256")
    if sent:
        sent_hash = sent[0]
        if sent_hash == UNSIGNED_PAYLOAD and service != "s3":  # AWS: unsigned payloads are S3's alone
            raise _forbidden(
                code, f"'x-amz-content-sha256: {UNSIGNED_PAYLOAD}' is only accepted for service s3."
            )
        if sent_hash != UNSIGNED_PAYLOAD and sent_hash != payload_hash:
            raise _forbidden(
                code, "The provided 'x-amz-content-sha256' header does not match what was computed."
            )
        payload_hash = sent_hash
    canonical = canonical_request(method, raw_path, raw_query, lists, signed, payload_hash, service)
    scope = f"{date}/{cred_region}/{service}/aws4_request"
    expected = _signature(secret, date, cred_region, service, string_to_sign(timestamp, scope, canonical))
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise _forbidden(code, SIGNATURE_MISMATCH)
    return Verified(key, date, cred_region, service)


def _verify_query(
    method: str,
    raw_path: str,
    raw_query: str,
    lists: Mapping[str, list[str]],
    query: Mapping[str, str],
    credentials: Mapping[str, str],
    now: float,
    region: str | None,
    services: Iterable[str] | None,
) -> Verified:
    code = "AccessDenied"
    missing = [
        k
        for k in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders")
        if not query.get(k)
    ]
    if missing or query["X-Amz-Algorithm"] != ALGORITHM:
        raise _forbidden(
            code,
            f"Query-string authentication requires the {', '.join(missing) or 'X-Amz-Algorithm'} parameter",
        )
    timestamp = query["X-Amz-Date"]
    try:
        expires = int(query["X-Amz-Expires"])
    except ValueError:
        raise _forbidden(code, "X-Amz-Expires should be a number") from None
    if not 0 < expires <= MAX_PRESIGN_EXPIRES_S:
        raise _forbidden(code, "X-Amz-Expires must be less than a week (in seconds) that is 604800")
    _check_time(timestamp, now, code, expires=expires)
    key, date, cred_region, service = _check_scope(
        query["X-Amz-Credential"], timestamp, region, services, code
    )
    secret = credentials.get(key)
    if secret is None:
        raise _forbidden(
            "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
        )
    signed = query["X-Amz-SignedHeaders"].split(";")
    payload_hash = (lists.get("x-amz-content-sha256") or [UNSIGNED_PAYLOAD])[0]
    canonical = canonical_request(
        method, raw_path, raw_query, lists, signed, payload_hash, service, drop_query="X-Amz-Signature"
    )
    scope = f"{date}/{cred_region}/{service}/aws4_request"
    expected = _signature(secret, date, cred_region, service, string_to_sign(timestamp, scope, canonical))
    if not hmac.compare_digest(expected, query["X-Amz-Signature"]):
        raise _forbidden("SignatureDoesNotMatch", SIGNATURE_MISMATCH)
    return Verified(key, date, cred_region, service)
