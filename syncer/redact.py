"""The one credential scrubber: every log line, error message and stored source name goes
through `redact()`. A leaf module (standard library only)."""

from __future__ import annotations

import re

# user:password@ (or a bare token@) right after "//": anything up to the last "@" before the host,
# so a password with an unencoded "/" or ":" goes too (`http://u:s3cr/tPASS@host`)
_USERINFO = re.compile(r"//(?P<userinfo>[^\s@?#]*)@")
# query parameters whose name says they carry a secret: ?token=..., &X-Amz-Signature=..., ...
_SECRET_NAME = r"[^\s=&?#]*(?:token|key|passw(?:or)?d|pwd|secret|signature|sig|credential|auth|session)[^\s=&?#]*"
_SECRET_PARAM = re.compile(rf"(?P<name>[?&;]{_SECRET_NAME})=(?P<value>[^\s&#;]*)", re.I)


def redact(text: str) -> str:
    """`text` with every URI's user-info and every secret-looking query parameter replaced:

    >>> redact("http://alice:s3cr/t@host:5000/x?run=1&token=abc")
    'http://alice:***@host:5000/x?run=1&token=***'
    """
    if "@" in text:
        text = _USERINFO.sub(_userinfo, text)
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: f"{m.group('name')}=***", text)
    return text


def _userinfo(m: re.Match[str]) -> str:
    info = m.group("userinfo")
    user, sep, _secret = info.partition(":")
    if sep and user and "/" not in user:
        return f"//{user}:***@"
    return "//***@"
