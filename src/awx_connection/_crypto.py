"""
Encryption at rest: AES-256-GCM envelopes with key ids.

Every secret a durable store writes (access and refresh tokens, the
authorization code, the PKCE verifier) becomes an envelope::

    awx1:<key id>:<12-byte nonce, base64url>:<ciphertext and tag, base64url>

The associated data binds an envelope to its connection *and* field
(``"<connection id>/<field>"``), so a ciphertext copied to another row or
another column does not decrypt. A :class:`KeyRing` holds several keys: the
first (newest) encrypts, all of them decrypt, which is what makes key
rotation possible without downtime (``awx-connection keys rotate``
re-encrypts every row to the newest key).

Why ``cryptography``'s AESGCM rather than our own construction: it is the
audited, maintained binding to OpenSSL that everyone else uses.
"""

from __future__ import annotations

import binascii
import os
import secrets
from collections.abc import Iterable, Mapping
from typing import final

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import ConfigurationError, DecryptionError

__all__ = ["KeyRing"]

_PREFIX = "awx1"


def _b64encode(data: bytes) -> str:
    return pybase64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


#: Up to this length (a nonce, a key) ``a2b_base64`` is faster: pybase64's
#: call costs 0.3 µs before it decodes anything, binascii's 0.08 µs.
_SHORT = 64


def _b64decode(text: str) -> bytes:
    """
    Decode unpadded base64url, strictly: any character outside the
    alphabet raises ``binascii.Error`` (non-ASCII text ``ValueError``).

    pybase64 for anything longer than a nonce: loading a connection decodes
    two 1.4 KB envelopes, and CPython's byte-at-a-time ``a2b_base64`` was
    29% of the instructions of a ``load()`` (2.1 -> 0.65 µs a token here).
    Strict, where ``a2b_base64`` used to skip stray characters: what we
    write never has any, and a tampered envelope now fails before AES-GCM
    does. ``+``, ``/`` and ``=`` are refused by hand: what we write is
    unpadded base64url, and pybase64 still accepts the standard alphabet
    beside ``altchars`` (with a DeprecationWarning). Unused bits of a last
    group are not checked (``QR`` reads as ``QQ``): AES-GCM authenticates
    the decoded bytes, which is what matters.
    """
    if "+" in text or "/" in text or "=" in text:
        raise binascii.Error("not unpadded base64url")
    padded = text + "=" * (-len(text) % 4)
    if len(text) <= _SHORT:
        return binascii.a2b_base64(padded.replace("-", "+").replace("_", "/"), strict_mode=True)
    return pybase64.b64decode(padded, altchars=b"-_", validate=True)


def _key_material(text: str) -> bytes:
    """
    A configured key: base64url as ``keys new`` prints it, or standard
    base64 with padding as ``openssl rand -base64 32`` does. Lenient, unlike
    :func:`_b64decode`: keys were always read this way, and a key that
    decodes to the wrong thing fails its length check anyway.
    """
    return binascii.a2b_base64(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4))


def _check_key_id(key_id: str) -> str:
    if not key_id or not all(c.isalnum() or c in "-_." for c in key_id):
        msg = f"key id {key_id!r} must be non-empty and use only letters, digits, '-', '_', '.'"
        raise ConfigurationError(msg)
    return key_id


@final
class KeyRing:
    """
    The encryption keys of a store: the first encrypts, every one decrypts.

    Keys are 32 random bytes (AES-256). Build one with
    ``KeyRing([("2026-11", key_bytes), ("2026-05", older_bytes)])``, from
    the environment with :meth:`from_env`, or for tests with :meth:`generate`.
    """

    __slots__ = ("_keys", "_primary")

    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        pairs = list(keys)
        if not pairs:
            msg = "a key ring needs at least one key"
            raise ConfigurationError(msg)
        ring: dict[str, AESGCM] = {}
        for key_id, material in pairs:
            _check_key_id(key_id)
            if key_id in ring:
                msg = f"key id {key_id!r} appears twice"
                raise ConfigurationError(msg)
            if len(material) != 32:
                msg = f"key {key_id!r} must be 32 bytes (AES-256), got {len(material)}"
                raise ConfigurationError(msg)
            ring[key_id] = AESGCM(material)
        self._keys = ring
        self._primary = pairs[0][0]

    @property
    def primary(self) -> str:
        """The id of the key that encrypts."""
        return self._primary

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id, the primary first."""
        return tuple(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={self.key_ids!r})"

    @staticmethod
    def new_key() -> str:
        """A fresh key, base64url-encoded, for configuration files."""
        return _b64encode(secrets.token_bytes(32))

    @classmethod
    def generate(cls, key_id: str = "k1") -> KeyRing:
        """A ring with one random key (tests, demos)."""
        return cls([(key_id, secrets.token_bytes(32))])

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """
        Read ``"id1:base64key,id2:base64key"`` (newest first).

        Raises:
            ConfigurationError: Malformed spec or key.
        """
        pairs = []
        for item in spec.split(","):
            key_id, sep, encoded = item.strip().partition(":")
            if not sep:
                msg = "encryption keys must look like 'id:base64key[,id:base64key...]'"
                raise ConfigurationError(msg)
            try:
                material = _key_material(encoded.strip())
            except ValueError:  # binascii.Error is one
                msg = f"key {key_id!r} is not valid base64"
                raise ConfigurationError(msg) from None
            pairs.append((key_id.strip(), material))
        return cls(pairs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        """
        Read ``AWX_ENCRYPTION_KEYS`` (see :meth:`parse`).

        Raises:
            ConfigurationError: The variable is missing or malformed.
        """
        env = os.environ if environ is None else environ
        spec = env.get("AWX_ENCRYPTION_KEYS", "")
        if not spec:
            msg = "AWX_ENCRYPTION_KEYS is not set (generate one: awx-connection keys new)"
            raise ConfigurationError(msg)
        return cls.parse(spec)

    def encrypt(self, plaintext: str, *, connection_id: str, field: str) -> str:
        """Seal *plaintext* for one field of one connection with the primary key."""
        nonce = secrets.token_bytes(12)
        sealed = self._keys[self._primary].encrypt(
            nonce, plaintext.encode(), f"{connection_id}/{field}".encode()
        )
        return f"{_PREFIX}:{self._primary}:{_b64encode(nonce)}:{_b64encode(sealed)}"

    def decrypt(self, envelope: str, *, connection_id: str, field: str) -> str:
        """
        Open an envelope made by :meth:`encrypt` with any key of the ring.

        Raises:
            DecryptionError: Unknown key id, malformed envelope, or a tag
                mismatch (wrong key, tampered data, or moved to another row).
        """
        # maxsplit, then a check for a fifth part: the same test as a plain
        # split, without splitting the 1.4 KB of ciphertext character by
        # character (0.5 -> 0.15 µs).
        parts = envelope.split(":", 3)
        if len(parts) != 4 or parts[0] != _PREFIX or ":" in parts[3]:
            raise DecryptionError(connection_id, f"{field}: not an encrypted envelope")
        _, key_id, nonce_text, sealed_text = parts
        key = self._keys.get(key_id)
        if key is None:
            raise DecryptionError(connection_id, f"{field}: unknown key id {key_id!r}")
        try:
            nonce = _b64decode(nonce_text)
            sealed = _b64decode(sealed_text)
            plain = key.decrypt(nonce, sealed, f"{connection_id}/{field}".encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptionError(
                connection_id, f"{field}: authentication failed (wrong key or tampered row)"
            ) from None
        return plain.decode()

    @staticmethod
    def is_envelope(value: str) -> bool:
        """Whether *value* looks like an envelope (rather than a plaintext secret)."""
        return value.startswith(_PREFIX + ":")

    def key_of(self, envelope: str) -> str | None:
        """The key id an envelope was sealed with, if it is one."""
        parts = envelope.split(":")
        return parts[1] if len(parts) == 4 and parts[0] == _PREFIX else None
