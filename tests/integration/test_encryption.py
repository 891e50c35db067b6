"""
Encryption at rest: the key ring itself, and what actually lands on disk.

The first part checks :class:`~awx_connection.KeyRing` on its own: envelopes
round-trip, are bound to their connection and field, and every way of
failing is a :class:`~awx_connection.DecryptionError` or
:class:`~awx_connection.ConfigurationError` that names no secret.

The second part checks the promise that matters, on a real SQLite file: the
raw bytes of the database (and its WAL) hold no token, code or verifier; a
tampered or wrongly keyed row fails loudly for that connection only, and is
never rewritten.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from awx_connection import (
    Config,
    ConfigurationError,
    ConnectionEvent,
    ConnectionManager,
    ConnectionRecord,
    ConnectionState,
    DecryptionError,
    KeyRing,
    PendingAuthorization,
    Secret,
    StoreError,
    TokenSet,
    Trigger,
)
from awx_connection._crypto import _b64decode, _b64encode
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


def b64(material: bytes) -> str:
    """*material* in the unpadded base64url that KeyRing.parse reads."""
    return base64.urlsafe_b64encode(material).rstrip(b"=").decode()


def flip(envelope: str) -> str:
    """*envelope* with one character in the middle of its ciphertext changed."""
    head, sealed = envelope.rsplit(":", 1)
    middle = len(sealed) // 2
    replacement = "A" if sealed[middle] != "A" else "B"
    return f"{head}:{sealed[:middle]}{replacement}{sealed[middle + 1 :]}"


# --- KeyRing -----------------------------------------------------------------------------


def test_encrypt_then_decrypt_round_trips() -> None:
    """An envelope opens to its plaintext, names its key, and hides the plaintext."""
    ring = KeyRing.generate("k1")
    envelope = ring.encrypt("refresh-xyz", connection_id="c1", field="refresh_token")
    assert "refresh-xyz" == ring.decrypt(envelope, connection_id="c1", field="refresh_token")
    assert envelope.startswith("awx1:k1:")
    assert "refresh-xyz" not in envelope
    assert KeyRing.is_envelope(envelope)
    assert "k1" == ring.key_of(envelope)


def test_each_encryption_uses_a_fresh_nonce() -> None:
    """The same plaintext sealed twice gives different envelopes (no equality leak)."""
    ring = KeyRing.generate()
    first = ring.encrypt("same", connection_id="c1", field="code")
    second = ring.encrypt("same", connection_id="c1", field="code")
    assert first != second


def test_empty_and_unicode_plaintexts_round_trip() -> None:
    """Every string survives, including the empty one and non-ASCII."""
    ring = KeyRing.generate()
    for plaintext in ("", "ключ-🔑", "x" * 10_000):
        envelope = ring.encrypt(plaintext, connection_id="c1", field="code")
        assert plaintext == ring.decrypt(envelope, connection_id="c1", field="code")


def test_envelope_moved_to_another_connection_does_not_decrypt() -> None:
    """The connection id is authenticated data: a copied envelope fails, naming the target."""
    ring = KeyRing.generate()
    envelope = ring.encrypt("token", connection_id="c1", field="access_token")
    with pytest.raises(DecryptionError, match="'c2'") as caught:
        ring.decrypt(envelope, connection_id="c2", field="access_token")
    assert "c2" == caught.value.connection_id


def test_envelope_moved_to_another_field_does_not_decrypt() -> None:
    """The field is authenticated data: an access token cannot pass as a refresh token."""
    ring = KeyRing.generate()
    envelope = ring.encrypt("token", connection_id="c1", field="access_token")
    with pytest.raises(DecryptionError, match="refresh_token") as caught:
        ring.decrypt(envelope, connection_id="c1", field="refresh_token")
    assert "c1" == caught.value.connection_id


def test_unknown_key_id_does_not_decrypt() -> None:
    """A ring without the envelope's key says which key id it lacks."""
    envelope = KeyRing.generate("old").encrypt("token", connection_id="c1", field="code")
    with pytest.raises(DecryptionError, match="unknown key id 'old'"):
        KeyRing.generate("new").decrypt(envelope, connection_id="c1", field="code")


def test_wrong_key_material_under_the_same_id_does_not_decrypt() -> None:
    """Same key id, different bytes: the tag check fails."""
    envelope = KeyRing.generate("k1").encrypt("token", connection_id="c1", field="code")
    with pytest.raises(DecryptionError, match="authentication failed"):
        KeyRing.generate("k1").decrypt(envelope, connection_id="c1", field="code")


@pytest.mark.parametrize(
    "envelope",
    [
        "plain-token",
        "awx1:k1:only-three",
        "awx2:k1:AAAA:BBBB",
        "awx1:k1:!!!!:????",
        "awx1:k1::",
        "awx1:k1:a:b:c",
    ],
)
def test_malformed_envelope_does_not_decrypt(envelope: str) -> None:
    """Anything that is not a well-formed envelope is a DecryptionError, not a crash."""
    with pytest.raises(DecryptionError, match="'c1'"):
        KeyRing.generate("k1").decrypt(envelope, connection_id="c1", field="code")


def test_tampered_ciphertext_does_not_decrypt() -> None:
    """One changed character of the sealed part fails authentication."""
    ring = KeyRing.generate()
    envelope = ring.encrypt("token", connection_id="c1", field="code")
    with pytest.raises(DecryptionError, match="authentication failed"):
        ring.decrypt(flip(envelope), connection_id="c1", field="code")


@pytest.mark.parametrize("stray", [" ", "\n", "+", "/", "=", "*", "\u00e9"])
@pytest.mark.parametrize("part", [2, 3])
def test_a_stray_character_in_an_envelope_is_refused_not_skipped(stray: str, part: int) -> None:
    """
    A character outside unpadded base64url, in the nonce or the long sealed
    part, is a DecryptionError: the decoder refuses it rather than skipping
    it and leaving the rest to AES-GCM.
    """
    ring = KeyRing.generate()
    token = "tok-" + secrets.token_urlsafe(700)
    parts = ring.encrypt(token, connection_id="c1", field="access_token").split(":")
    assert token == ring.decrypt(":".join(parts), connection_id="c1", field="access_token")
    middle = len(parts[part]) // 2
    parts[part] = parts[part][:middle] + stray + parts[part][middle:]
    with pytest.raises(DecryptionError, match="'c1'"):
        ring.decrypt(":".join(parts), connection_id="c1", field="access_token")


def test_envelopes_in_the_stored_format_open() -> None:
    """
    An envelope built by hand from the documented format (standard library
    base64url, padding stripped) opens: the faster decoder reads every row
    written before it.
    """
    key = secrets.token_bytes(32)
    nonce = secrets.token_bytes(12)
    plaintext = "tok-" + secrets.token_urlsafe(768)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), b"c1/access_token")

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    envelope = f"awx1:k1:{b64(nonce)}:{b64(sealed)}"
    ring = KeyRing([("k1", key)])
    assert plaintext == ring.decrypt(envelope, connection_id="c1", field="access_token")


def _stdlib_b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@given(st.binary(max_size=200) | st.binary(min_size=40, max_size=60))
def test_b64decode_reads_what_b64encode_wrote(value: bytes) -> None:
    """Every envelope part we write decodes to its bytes, as the standard library reads it."""
    text = _b64encode(value)
    assert "=" not in text
    assert _b64decode(text) == value == _stdlib_b64decode(text)


@given(st.text(max_size=40) | st.text(alphabet="AZaz09-_+/= *", min_size=60, max_size=100))
def test_b64decode_is_stricter_than_the_standard_library(text: str) -> None:
    """
    Any text: the same bytes as ``base64.urlsafe_b64decode``, or a
    ``ValueError`` (``binascii.Error`` is one). Never bytes the standard
    library would not give, and never another exception. (Refusing
    everything would pass this one: the test above shows what must decode.)
    """
    try:
        actual = _b64decode(text)
    except ValueError:
        return
    assert actual == _stdlib_b64decode(text)


@pytest.mark.parametrize(
    "text",
    [
        *("ab+c", "ab/c", "a b", "abc\n", "ab=c", "a", "\u00e9abc", "abc=", "ab*c"),
        # The same past the short-text path (64 characters).
        *(c * 68 + "ab" + s for c in "Aa" for s in ("+c", "/c", " c", "\nc", "=c", "*c")),
        "A" * 69,
    ],
)
def test_b64decode_refuses_what_is_not_unpadded_base64url(text: str) -> None:
    """Stray characters, padding and the standard alphabet's + and / are refused, not skipped."""
    with pytest.raises(ValueError):
        _b64decode(text)


def test_decryption_error_names_no_secret() -> None:
    """The message names the connection and field, never the plaintext or the envelope."""
    ring = KeyRing.generate()
    envelope = ring.encrypt("super-secret-token", connection_id="c1", field="code")
    with pytest.raises(DecryptionError) as caught:
        KeyRing.generate().decrypt(envelope, connection_id="c1", field="code")
    assert "super-secret-token" not in str(caught.value)
    assert envelope.split(":")[3] not in str(caught.value)


def test_older_keys_decrypt_and_the_first_encrypts() -> None:
    """A ring [new, old] opens envelopes of old and seals with new."""
    old_bytes, new_bytes = secrets.token_bytes(32), secrets.token_bytes(32)
    envelope = KeyRing([("old", old_bytes)]).encrypt("t", connection_id="c1", field="code")
    ring = KeyRing([("new", new_bytes), ("old", old_bytes)])
    assert "t" == ring.decrypt(envelope, connection_id="c1", field="code")
    assert ("new", ("new", "old")) == (ring.primary, ring.key_ids)
    assert "new" == ring.key_of(ring.encrypt("t", connection_id="c1", field="code"))


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_keys_must_be_32_bytes(length: int) -> None:
    """AES-256 only: any other key length is refused at construction."""
    with pytest.raises(ConfigurationError, match="32 bytes"):
        KeyRing([("k1", b"\x01" * length)])


def test_a_ring_needs_a_key() -> None:
    """An empty ring could not encrypt anything."""
    with pytest.raises(ConfigurationError, match="at least one key"):
        KeyRing([])


def test_duplicate_key_ids_are_refused() -> None:
    """Two keys under one id would make envelopes ambiguous."""
    with pytest.raises(ConfigurationError, match="'k1' appears twice"):
        KeyRing([("k1", secrets.token_bytes(32)), ("k1", secrets.token_bytes(32))])


@pytest.mark.parametrize("key_id", ["", "a:b", "with space", "k/1", "k,1"])
def test_bad_key_ids_are_refused(key_id: str) -> None:
    """A key id is part of the envelope, so it must not contain separators or spaces."""
    with pytest.raises(ConfigurationError, match="key id"):
        KeyRing([(key_id, secrets.token_bytes(32))])


def test_parse_reads_ids_and_keys_newest_first() -> None:
    """``id:base64key,...`` builds a ring in order, tolerating spaces around items."""
    new_bytes, old_bytes = secrets.token_bytes(32), secrets.token_bytes(32)
    ring = KeyRing.parse(f" 2026-11:{b64(new_bytes)} , 2026-05.a_b:{b64(old_bytes)}")
    assert ("2026-11", "2026-05.a_b") == ring.key_ids
    envelope = KeyRing([("2026-05.a_b", old_bytes)]).encrypt("t", connection_id="c", field="f")
    assert "t" == ring.decrypt(envelope, connection_id="c", field="f")


def test_parse_reads_new_key_output() -> None:
    """A key made by ``new_key`` (what ``awx-connection keys new`` prints) parses."""
    assert ("k1",) == KeyRing.parse(f"k1:{KeyRing.new_key()}").key_ids
    assert KeyRing.new_key() != KeyRing.new_key()


def test_parse_reads_standard_padded_base64_keys_too() -> None:
    """
    A key as ``openssl rand -base64 32`` prints it (``+``, ``/``, ``=``)
    parses to the same key as its base64url form: envelopes are decoded
    strictly, configured keys never were.
    """
    material = bytes(range(250, 256)) * 5 + b"\xfb\xff"  # encodes with + and /
    standard = base64.b64encode(material).decode()
    assert "+" in standard and "/" in standard and standard.endswith("=")
    envelope = KeyRing([("k1", material)]).encrypt("t", connection_id="c", field="f")
    for spec in (f"k1:{standard}", f"k1:{b64(material)}"):
        assert "t" == KeyRing.parse(spec).decrypt(envelope, connection_id="c", field="f")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-colon", "must look like"),
        ("k1:a", "not valid base64"),
        ("k1:abcd", "32 bytes"),
        (f"k1:{b64(bytes(32))},no-colon", "must look like"),
        (f"k1:{b64(bytes(32))},k1:{b64(bytes(32))}", "appears twice"),
    ],
)
def test_parse_refuses_malformed_specs(spec: str, message: str) -> None:
    """Each way a spec can be wrong is a ConfigurationError that says how."""
    with pytest.raises(ConfigurationError, match=message):
        KeyRing.parse(spec)


def test_from_env_reads_awx_encryption_keys() -> None:
    """The ring comes from AWX_ENCRYPTION_KEYS in the given mapping."""
    ring = KeyRing.from_env({"AWX_ENCRYPTION_KEYS": f"prod:{b64(secrets.token_bytes(32))}"})
    assert ("prod",) == ring.key_ids


@pytest.mark.parametrize("environ", [{}, {"AWX_ENCRYPTION_KEYS": ""}])
def test_from_env_without_the_variable_raises(environ: dict[str, str]) -> None:
    """A missing or empty variable is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="AWX_ENCRYPTION_KEYS"):
        KeyRing.from_env(environ)


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mapping, the process environment is read."""
    monkeypatch.setenv("AWX_ENCRYPTION_KEYS", f"envkey:{b64(secrets.token_bytes(32))}")
    assert ("envkey",) == KeyRing.from_env().key_ids


def test_repr_shows_key_ids_and_never_key_material(tmp_path: Path) -> None:
    """Neither the ring's repr nor a store's shows the key bytes in any encoding."""
    material = secrets.token_bytes(32)
    ring = KeyRing([("k2", material), ("k1", secrets.token_bytes(32))])
    assert "KeyRing(key_ids=('k2', 'k1'))" == repr(ring)
    for text in (repr(ring), str(ring), repr(SQLiteStore(tmp_path / "awx.db", keys=ring))):
        for encoded in (b64(material), material.hex(), repr(material), str(list(material))):
            assert encoded not in text


# --- SQLite at rest ----------------------------------------------------------------------


@attrs.frozen
class Plaintexts:
    """Distinctive random secret values, so finding one in the file cannot be a coincidence."""

    access: str = attrs.field(factory=lambda: "ACCESS-" + secrets.token_hex(16))
    refresh: str = attrs.field(factory=lambda: "REFRESH-" + secrets.token_hex(16))
    code: str = attrs.field(factory=lambda: "CODE-" + secrets.token_hex(16))
    verifier: str = attrs.field(factory=lambda: "VERIFIER-" + secrets.token_hex(16))

    def all(self) -> set[str]:
        return {self.access, self.refresh, self.code, self.verifier}


def make_record(connection_id: str, plain: Plaintexts, **changes: Any) -> ConnectionRecord:
    """A version-1 record carrying every kind of secret, with *plain*'s values."""
    record = ConnectionRecord(
        id=connection_id,
        state=ConnectionState.PENDING,
        version=1,
        sequence=1,
        created_at=1000.0,
        updated_at=1000.0,
        reason="begin",
        authorization=PendingAuthorization(
            state_hash=f"hash-{connection_id}",
            expires_at=1600.0,
            redirect_uri="https://partner.example/callback",
            code_verifier=Secret(plain.verifier),
        ),
        code=Secret(plain.code),
        tokens=TokenSet(
            access_token=Secret(plain.access),
            refresh_token=Secret(plain.refresh),
            access_expires_at=1300.0,
            refresh_expires_at=9000.0,
            issued_at=1000.0,
            generation=1,
        ),
    )
    return attrs.evolve(record, **changes)


def make_event(connection_id: str, sequence: int = 1) -> ConnectionEvent:
    """The event of *sequence* of *connection_id*."""
    return ConnectionEvent(
        connection_id=connection_id,
        sequence=sequence,
        trigger=Trigger.BEGIN,
        source=None,
        dest=ConnectionState.PENDING,
        reason="begin",
        at=1000.0 + sequence,
    )


async def insert(store: SQLiteStore, connection_id: str, plain: Plaintexts) -> ConnectionRecord:
    record = make_record(connection_id, plain, created_at=float(len(connection_id)))
    await store.insert(record, make_event(connection_id))
    return record


@contextlib.asynccontextmanager
async def opened(path: Path, keys: KeyRing | None) -> AsyncIterator[SQLiteStore]:
    """
    An SQLite store on *path* with *keys*, opened, and closed on exit;
    ``None`` is plaintext, which is what the tests passing it are about.
    """
    store = SQLiteStore(path, keys=keys, allow_plaintext=keys is None)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the file, committed and closed on exit."""
    db = sqlite3.connect(path)
    try:
        with db:
            yield db
    finally:
        db.close()


def file_bytes(path: Path) -> bytes:
    """The database file and, when present, its WAL and shared-memory index."""
    return b"".join(
        candidate.read_bytes()
        for candidate in (
            path,
            path.with_name(path.name + "-wal"),
            path.with_name(path.name + "-shm"),
        )
        if candidate.exists()
    )


def found_on_disk(path: Path, plain: Plaintexts) -> set[str]:
    """Which of *plain*'s secrets appear anywhere in the file's raw bytes."""
    content = file_bytes(path)
    return {value for value in plain.all() if value.encode() in content}


def stored_data(path: Path, connection_id: str) -> bytes:
    with raw(path) as db:
        [(data,)] = db.execute("SELECT data FROM connections WHERE id = ?", (connection_id,))
    return bytes(data)


async def store_and_scan(path: Path, keys: KeyRing | None) -> tuple[Plaintexts, set[str]]:
    """
    Store a connection, replace its secrets, and look for every one on disk.

    Looks while the store is open (the WAL holds the recent pages) and again
    after it closed (the WAL checkpointed into the main file). Returns the
    current secrets and every secret, old or current, that was found.
    """
    old, current = Plaintexts(), Plaintexts()
    async with opened(path, keys) as store:
        record = await insert(store, "c1", old)
        newer = attrs.evolve(
            make_record("c1", current, created_at=record.created_at), version=2, sequence=2
        )
        await store.update(newer, expected_version=1, event=make_event("c1", 2))
        assert newer == await store.get("c1")
        assert path.with_name(path.name + "-wal").exists()
        found = found_on_disk(path, old) | found_on_disk(path, current)
    found |= found_on_disk(path, old) | found_on_disk(path, current)
    return current, found


async def test_sqlite_file_holds_no_plaintext_secret(tmp_path: Path) -> None:
    """With keys, no token, code or verifier appears in the file's or the WAL's raw bytes."""
    _, found = await store_and_scan(tmp_path / "awx.db", KeyRing.generate())
    assert set() == found


async def test_sqlite_file_without_keys_holds_the_plaintext(tmp_path: Path) -> None:
    """The same scan finds the secrets when keys=None, so the test above can fail."""
    current, found = await store_and_scan(tmp_path / "awx.db", None)
    assert current.all() == current.all() & found


async def test_replaced_secrets_do_not_linger_in_the_file(tmp_path: Path) -> None:
    """Sealing a plaintext row leaves none of the old plaintext behind."""
    path = tmp_path / "awx.db"
    plain = Plaintexts()
    async with opened(path, None) as store:
        record = await insert(store, "c1", plain)
    keys = KeyRing.generate()
    async with opened(path, keys) as store:
        assert 1 == await store.rotate_keys(seal_plaintext=True)
        assert 0 == await store.rotate_keys()
    assert set() == found_on_disk(path, plain)
    async with opened(path, keys) as store:
        assert record == await store.get("c1")


async def test_tampered_row_fails_for_that_connection_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A changed envelope fails get() naming the row; others load; the listing skips and logs."""
    path = tmp_path / "awx.db"
    async with opened(path, KeyRing.generate()) as store:
        await insert(store, "victim", Plaintexts())
        bystander = await insert(store, "bystander", Plaintexts())
        fields = orjson.loads(stored_data(path, "victim"))
        fields["tokens"]["refresh_token"] = flip(fields["tokens"]["refresh_token"])
        tampered = orjson.dumps(fields)
        with raw(path) as db:
            db.execute("UPDATE connections SET data = ? WHERE id = 'victim'", (tampered,))

        with pytest.raises(DecryptionError, match="'victim'") as caught:
            await store.get("victim")
        assert "victim" == caught.value.connection_id
        with pytest.raises(DecryptionError, match="'victim'"):
            await store.find_by_state_hash("hash-victim")
        assert bystander == await store.get("bystander")
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [bystander] == await store.list_connections()
    [logged] = caplog.records
    assert (logging.ERROR, "awx_connection.stores") == (logged.levelno, logged.name)
    assert "'victim'" in logged.getMessage()
    assert tampered == stored_data(path, "victim")


@pytest.mark.parametrize("key_id", ["k1", "other"])
async def test_wrong_key_fails_loudly_and_rewrites_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, key_id: str
) -> None:
    """Reopened with another ring, every read fails by name and no byte of the row changes."""
    path = tmp_path / "awx.db"
    async with opened(path, KeyRing.generate("k1")) as store:
        await insert(store, "c1", Plaintexts())
    before = stored_data(path, "c1")
    async with opened(path, KeyRing.generate(key_id)) as store:
        with pytest.raises(DecryptionError, match="'c1'"):
            await store.get("c1")
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [] == await store.list_connections()
            with pytest.raises(StoreError, match=r"could not read 1.*'c1'"):
                await store.rotate_keys()
        assert 1 == len(await store.read_events("c1"))
    assert before == stored_data(path, "c1")
    assert 2 == len(caplog.records)
    assert all("'c1'" in record.getMessage() for record in caplog.records)


async def test_rotate_keys_rotates_the_readable_rows_around_a_bad_one(tmp_path: Path) -> None:
    """One undecryptable row is reported; every other row is still moved to the new key."""
    path = tmp_path / "awx.db"
    k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)
    async with opened(path, KeyRing([("k1", k1)])) as store:
        good = [await insert(store, "a", Plaintexts()), await insert(store, "c", Plaintexts())]
        await insert(store, "bad", Plaintexts())
    fields = orjson.loads(stored_data(path, "bad"))
    fields["code"] = flip(fields["code"])
    with raw(path) as db:
        db.execute("UPDATE connections SET data = ? WHERE id = 'bad'", (orjson.dumps(fields),))
    async with opened(path, KeyRing([("k2", k2), ("k1", k1)])) as store:
        with pytest.raises(StoreError, match=r"re-encrypted 2 .* could not read 1.*'bad'"):
            await store.rotate_keys()
    async with opened(path, KeyRing([("k2", k2)])) as store:
        assert good == [await store.get("a"), await store.get("c")]


async def test_plaintext_rows_do_not_read_with_keys_until_sealed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """
    Turning encryption on does not silently accept rows written before it:
    with keys, plaintext is what tampering looks like. rotate_keys() reports
    them and rewrites nothing; rotate_keys(seal_plaintext=True) seals them.
    """
    path = tmp_path / "awx.db"
    async with opened(path, None) as store:
        record = await insert(store, "c1", Plaintexts())
    before = stored_data(path, "c1")
    async with opened(path, KeyRing.generate()) as store:
        with pytest.raises(DecryptionError, match="'c1'"):
            await store.get("c1")
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [] == await store.list_connections()
            with pytest.raises(StoreError, match=r"could not read 1.*'c1'.*plaintext.*keys seal"):
                await store.rotate_keys()
        assert before == stored_data(path, "c1")
        assert 1 == await store.rotate_keys(seal_plaintext=True)
        assert record == await store.get("c1")


async def test_a_secret_tampered_to_plaintext_is_refused_until_sealed(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
) -> None:
    """
    A sealed refresh token replaced by plaintext in the file makes get() and
    access_token() raise DecryptionError naming the connection and the
    field, never the value; listings leave the row out with an ERROR, the
    row is left as it is, and only rotate_keys(seal_plaintext=True) seals
    it (a WARNING names the connection).
    """
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as awx:
        victim = await connect(awx, awx_fake)
        bystander = await connect(awx, awx_fake)
    fields = orjson.loads(stored_data(path, victim))
    swapped = "attacker-token-" + secrets.token_urlsafe(16)
    fields["tokens"]["refresh_token"] = swapped
    tampered = orjson.dumps(fields)
    with raw(path) as db:
        db.execute("UPDATE connections SET data = ? WHERE id = ?", (tampered, victim))

    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as awx:
        with pytest.raises(DecryptionError, match="refresh_token: plaintext") as caught:
            await awx.access_token(victim)
        assert victim == caught.value.connection_id
        with pytest.raises(DecryptionError, match=f"'{victim}'") as again:
            await awx.store.get(victim)
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [bystander] == [c.id for c in await awx.connections()]
        assert await awx.access_token(bystander)
    [logged] = caplog.records
    assert (logging.ERROR, "awx_connection.stores") == (logged.levelno, logged.name)
    assert repr(victim) in logged.getMessage()
    shown = [str(caught.value), str(again.value), logged.getMessage()]
    assert [] == [text for text in shown if swapped in text]
    assert tampered == stored_data(path, victim)

    caplog.clear()
    async with opened(path, keys) as store:
        with caplog.at_level(logging.WARNING, logger="awx_connection.stores"):
            assert 1 == await store.rotate_keys(seal_plaintext=True)
        sealed = await store.get(victim)
    assert [f"sqlite store: rotate_keys sealed plaintext secrets of connection {victim!r}"] == [
        record.getMessage() for record in caplog.records
    ]
    assert sealed is not None
    assert sealed.tokens is not None
    assert Secret(swapped) == sealed.tokens.refresh_token
    assert swapped.encode() not in stored_data(path, victim)


async def connect(awx: ConnectionManager, fake: FakeAirwallex) -> str:
    """An active connection to a fresh account; its id."""
    request = await awx.begin_authorization()
    callback = fake.approve(request.url, account_id=fake.create_account())
    return (await awx.complete_authorization(callback)).id


async def test_encrypted_rows_need_keys(tmp_path: Path) -> None:
    """A store opened without keys cannot read sealed rows: a DecryptionError, not garbage."""
    path = tmp_path / "awx.db"
    async with opened(path, KeyRing.generate()) as store:
        await insert(store, "c1", Plaintexts())
    async with opened(path, None) as store:
        with pytest.raises(DecryptionError, match="no keys configured"):
            await store.get("c1")
