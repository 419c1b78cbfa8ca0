"""Text that leaves the process (files, the console, TensorBoard): credentials in URLs redacted, control characters
escaped.

`redact`: a URL's user and password (https://user:PASSWORD@host/...) and the values of query parameters that
carry secrets (token, key, signature, ...: presigned links) become ***. Applied to every flag value and command
line that is stored or printed: config.yaml, the checkpoint's config, the record, train.log, TensorBoard's text
and hparams, error messages. The value itself is used as given (a download still authenticates).

`printable`: strings read from checkpoints, records and data (class names, hardware, a commit) are printed with
every control character as a Python escape (\\x1b), so a forged file cannot send terminal escapes (set the title,
clear the screen) or break an advice line into two commands."""
import re

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:[a-z0-9_.-]*(?:token|key|secret|passw|pwd|signature|sig|auth|credential)"
                           r"[a-z0-9_.-]*)=)[^&#\s]*")


def redact(text):
    """text with the credentials of every URL in it replaced by ***."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def redact_values(values):
    """A mapping with every string value redacted (a config's plain form)."""
    return {k: redact(v) for k, v in values.items()}


def printable(text, limit=300):
    """text with every control character (terminal escapes, newlines, bells) shown as a Python escape such as
    \\x1b, cut to limit characters."""
    text = str(text)
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")
