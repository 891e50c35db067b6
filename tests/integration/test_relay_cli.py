"""``events relay`` and ``events dead-letters``: the errors a user meets first, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from awx_connection.cli import main


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("AWX_ENCRYPTION_KEYS", raising=False)
    monkeypatch.delenv("AWX_RELAY_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("AWX_ALLOW_PLAINTEXT", "1")
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert 0 == main(["db", "migrate", "--store", url])
    return url


def test_an_unknown_sink_scheme_is_a_usage_error(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 2 == main(["events", "relay", "--store", store_url, "--to", "kafka://x:9092"])
    err = capsys.readouterr().err
    assert "--to must be nats://HOST:PORT or http(s)://" in err
    assert 1 == len(err.splitlines())


def test_a_webhook_relay_without_its_secret_is_a_usage_error(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 2 == main(["events", "relay", "--store", store_url, "--to", "https://hooks.test/x"])
    assert "AWX_RELAY_WEBHOOK_SECRET" in capsys.readouterr().err


def test_an_unreachable_broker_fails_in_one_line_without_the_password(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["events", "relay", "--store", store_url, "--to", "nats://u:hunter2@127.0.0.1:1"])
    err = capsys.readouterr().err
    assert 1 == code
    assert "cannot connect to nats://127.0.0.1:1" in err
    assert "hunter2" not in err


def test_no_dead_letters_list_nothing(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == main(["events", "dead-letters", "list", "--store", store_url, "--json"])
    assert "" == capsys.readouterr().out
