"""``enclave keys create --user``: a person's key from the command line (issue #18)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from enclave.auth.keys import KeyService
from enclave.cli.main import app as cli
from enclave.settings import Settings
from enclave.storage.db import open_database


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path))
    return tmp_path


def keys_at(home: Path) -> KeyService:
    _, sessions = open_database(Settings(home=home).resolved_database_url)
    return KeyService(sessions)


def test_a_key_made_for_a_person_is_theirs_and_capped_at_their_role(home: Path) -> None:
    keys = keys_at(home)
    carol = keys.users.signed_in(
        "https://login.example.org",
        "carol",
        name="Carol",
        email=None,
        groups=frozenset({"mpd"}),
        enabled_if_new=True,
    )
    made = CliRunner().invoke(
        cli,
        ["keys", "create", "carol-notebook", "--user", str(carol.id), "--role", "builder"],
    )
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    info = next(i for i in keys.list(None) if i.name == "carol-notebook")
    assert info.user_id == carol.id and info.role == "builder"
    # Carol has no role in the default workspace (no identity config here): the key, capped
    # at her role, opens nothing.
    with pytest.raises(Exception, match="no longer has a role"):
        keys.authenticate(secret)


def test_an_unknown_person_is_a_clear_error_and_no_key(home: Path) -> None:
    made = CliRunner().invoke(cli, ["keys", "create", "ghost", "--user", "999"])
    assert made.exit_code == 1
    assert "No user with id 999" in made.output
    assert not [i for i in keys_at(home).list(None) if i.name == "ghost"]
