"""The one credential scrubber: every log line, error message and stored source name goes
through `redact()`. A leaf module (standard library only)."""

from __future__ import annotations

import re

# user:password@ (or a bare token@) after "//": everything up to the last "@" of the line, so a
# password with an unencoded "/", ":", "@", "?", "#" or space goes too (`http://u:s3cr/t@PASS@host`).
# An "@" later on the line (a path, an e-mail) hides a little more than needed: never less.
_USERINFO = re.compile(r"//(?P<userinfo>[^\n]*)@")
# ... and the same after a scheme written with one slash or none, a typo users make
# (`postgresql:/user:PW@host`, `postgresql:user:PW@host`); a Windows drive (`C:`) is no scheme
_SHORT_USERINFO = re.compile(r"(?<![\w+.-])(?P<scheme>[a-zA-Z][\w+.-]+:/?)(?![/\s])(?P<userinfo>[^\n]*)@")
# query (or fragment) parameters whose name says they carry a secret: ?token=..., &X-Amz-Signature=...
_SECRET_WORDS = "token|key|pass|pw|secret|signature|sig|credential|auth|session|jwt|bearer|cookie"
_SECRET_NAME = rf"(?:[^\s=&?#;]*(?:{_SECRET_WORDS})[^\s=&?#;]*|tk)"
_SECRET_PARAM = re.compile(rf"(?P<name>[?&;#]{_SECRET_NAME})=(?P<value>[^\s&#;]*)", re.I)


def redact(text: str) -> str:
    """`text` with every URI's user-info and every secret-looking query parameter replaced:

    >>> redact("http://alice:s3cr/t@host:5000/x?run=1&token=abc")
    'http://alice:***@host:5000/x?run=1&token=***'
    """
    if "@" in text:
        text = _USERINFO.sub(_userinfo, text)
        text = _SHORT_USERINFO.sub(lambda m: m.group("scheme") + _userinfo(m)[2:], text)
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: f"{m.group('name')}=***", text)
    return text


def _userinfo(m: re.Match[str]) -> str:
    info = m.group("userinfo")
    user, sep, _secret = info.partition(":")
    if sep and user and not any(c in user for c in "/@?# "):
        return f"//{user}:***@"
    return "//***@"
