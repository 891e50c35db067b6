"""
Library messages in the CLI's words.

The library's errors speak to Python callers and may name Python
parameters (``scopes=``, ``Config.default_scopes``, ``allow_insecure=True``,
``external_id``). A CLI user sets the same things with flags and
environment variables, so :func:`in_cli_words` rewrites those names before
``main()`` prints a message: a leading parameter name becomes its flag or
variable, and the few sentences that advise a Python call are replaced by
the CLI's advice. Each rewrite is exercised by running the command that
triggers it (tests/system/test_cli_surprises.py), so a library message that
changes its wording fails a test instead of leaking a Python name.
"""

from __future__ import annotations

__all__ = ["in_cli_words"]

#: A message's first words, as the library names a value -> as the CLI sets it.
_LEADING = (
    ("external_id ", "--external-id "),
    ("account_id ", "--account-id "),
    ("connection_id ", "the connection ID "),
    ("consumer ", "--consumer "),
    ("event reason ", "--reason "),
    ("invalid scope ", "--scope: invalid scope "),
    ("redirect_uri ", "AWX_REDIRECT_URI "),
    ("authorize_url ", "AWX_BASE_URL: authorize URL "),
    ("token_url ", "AWX_BASE_URL: token URL "),
    ("api_base_url ", "AWX_BASE_URL: API URL "),
    ("client_id ", "AWX_CLIENT_ID "),
    ("client_secret ", "AWX_CLIENT_SECRET "),
)

#: Advice for a Python caller -> the same advice for a CLI user.
_PHRASES = (
    ("pass scopes= or set Config.default_scopes", "pass --scope SCOPE or set AWX_SCOPES"),
    ("Use HTTPS, a loopback address, or allow_insecure=True.", "Use HTTPS or a loopback address."),
    (
        "generate a key with 'awx-connection keys new' and pass keys=KeyRing.from_env() "
        "(it reads AWX_ENCRYPTION_KEYS), or accept plaintext explicitly with "
        "allow_plaintext=True (AWX_ALLOW_PLAINTEXT=1 for the CLI)",
        "set AWX_ENCRYPTION_KEYS (make a key with 'awx-connection keys new'), "
        "or accept plaintext explicitly with AWX_ALLOW_PLAINTEXT=1",
    ),
    ("rotate_keys(seal_plaintext=True) ('awx-connection keys seal')", "'awx-connection keys seal'"),
    (" store: rotate_keys re-encrypted ", " store: re-encrypted "),
)


def in_cli_words(message: str) -> str:
    """*message* with the Python names it holds replaced by the CLI's flags and variables."""
    for python, cli in _LEADING:
        if message.startswith(python):
            message = cli + message[len(python) :]
            break
    for python, cli in _PHRASES:
        message = message.replace(python, cli)
    return message
