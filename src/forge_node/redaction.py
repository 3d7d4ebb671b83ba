"""The one redaction for text that may hold a URL or a connection string: configuration
errors, connection errors, JWKS errors, log lines and CLI output all go through `scrub`.

It masks the password of a URL's user (`scheme://user:***@host`), a URL's whole query (where
tokens and keys travel: `?***`) and the `password=` of a libpq key/value string, wherever they
appear in the text. `url_host` names a URL's host alone, for messages about where a fetch
went."""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
_USER_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]*):[^\s@'\"]*@")
_QUERY = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s?'\"]*)\?[^\s'\"]*")
_KEY_VALUE_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\"]+)",
                                 re.IGNORECASE)


def scrub(text: str) -> str:
    """`text` with every URL password, URL query and `password=` value masked."""
    if "://" not in text and "assword" not in text and "ASSWORD" not in text:
        return text  # the common case, at the cost of two substring searches
    text = _USER_PASSWORD.sub(rf"\g<head>:{MASK}@", text)
    text = _QUERY.sub(rf"\g<head>?{MASK}", text)
    return _KEY_VALUE_PASSWORD.sub(rf"\g<head>{MASK}", text)


def url_host(url: str) -> str:
    """The host (and port) a URL names, without user, password, path or query."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"
