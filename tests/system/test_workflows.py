"""
The workflow examples do what they say, not merely exit 0.

Each example's ``main()`` runs in this process against its embedded fake
(in a temporary directory, since they write an SQLite file), and its output
is checked for the workflow's effect.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the example's main() in *tmp_path*, where it leaves its SQLite file."""
    monkeypatch.chdir(tmp_path)
    await load(name).main()


async def test_onboarding_starts_once_per_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Onboarding starts on activation with the fetched account, and not again after a refresh."""
    await run("workflow_onboarding", tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert 1 == out.count("start onboarding: Fake Pty Ltd (acct_")
    assert "pending -> authorized -> active -> refreshing -> active" in out
    assert "onboarded accounts: 1" in out


async def test_reconnect_notifies_and_the_same_connection_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A revoked or expired connection notifies its customer with a working reconnect link."""
    await run("workflow_reconnect", tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert "notify alice: your Airwallex connection is revoked" in out
    links = re.findall(r"reconnect here: (\S+)", out)
    assert 3 == len(links)  # alice revoked; alice and bob expired
    assert all("/oauth/authorize?" in link and "state=" in link for link in links)
    revoked = re.search(r"alice's token: connection '(conn_\w+)' is revoked", out)
    assert revoked is not None
    assert f"alice reconnected: {revoked.group(1)} is active" in out
    assert "notify bob: your Airwallex connection is expired" in out


async def test_action_required_webhook_flags_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signed account.action_required delivery flags the account's connection; answered 200."""
    await run("workflow_flag_action_required", tmp_path, monkeypatch)
    out = capsys.readouterr().out
    flagged = re.search(r"flagged (conn_\w+) \(account acct_[\w-]+\): kyc_rfi", out)
    assert flagged is not None
    assert "our endpoint answered: [200]" in out
    assert f"flagged connections: {{'{flagged.group(1)}': 'kyc_rfi'}}" in out
