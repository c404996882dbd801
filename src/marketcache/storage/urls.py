"""Secrets out of URLs and messages: the one redaction helper for every URL the code shows.
Below every backend (they all name their location in messages)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

# query keys whose values are secrets (libpq's password and sslpassword, and the usual names
# of keys and tokens in fsspec URLs)
SECRET_KEYS = frozenset(
    {"password", "sslpassword", "secret", "secret_key", "access_key", "token", "key",
     "aws_secret_access_key", "aws_session_token", "sas_token", "account_key"}
)  # fmt: skip
_IN_TEXT = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^\s/:@]*):(?P<pw>[^\s/@]*)@"
    r"|(?P<key>(?:[a-z_]*password|secret(?:_key)?|token|access_key|account_key|sas_token))"
    r"=(?P<value>[^\s&'\"]+)",
    re.IGNORECASE,
)


def redact(url: str) -> str:
    """`url` without its secrets — the password of `user:pass@` and secret query values
    (`?password=…`) are dropped — and still usable where the secret comes from elsewhere
    (PGPASSWORD, ~/.pgpass, AWS_* variables). The one helper for every URL the code shows:
    messages, reports, records, `info`."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, qmark, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}@{host}" if user.partition(":")[0] else host
    if qmark:
        pairs = parse_qsl(query, keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if k.lower() not in SECRET_KEYS]
        if len(kept) != len(pairs):
            query = urlencode(kept, safe="/")
    return f"{head}{sep}{netloc}{slash}{path}{'?' if query else ''}{query}"


def redact_text(text: str) -> str:
    """Any message with the secrets of the URLs (or `key=value` pairs) in it masked."""

    def mask(m: re.Match[str]) -> str:
        if m.group("scheme"):
            return f"{m.group('scheme')}{m.group('user')}:***@"
        return f"{m.group('key')}=***"

    return _IN_TEXT.sub(mask, text)
