"""2FAuth JSON exports, built here in the shape of 2FAuth's export resource."""

from __future__ import annotations

import json

import pytest

from totp_service.imports import twofauth
from totp_service.imports.detect import detect
from totp_service.imports.errors import EntryError, ImportFileError

from import_fixtures import check_entries, check_hotp_unsupported, twofauth_json
from import_fuzz import fuzz


def test_export() -> None:
    data = twofauth_json(hotp=True)
    assert detect(data) == "2fauth"
    entries = twofauth.read(data)
    check_entries(entries)
    check_hotp_unsupported(entries)


def test_steamtotp_is_listed_unsupported() -> None:
    export = json.loads(twofauth_json())
    export["data"][0]["otp_type"] = "steamtotp"
    first = twofauth.read(json.dumps(export).encode())[0]
    assert first.spec is None and first.kind == "steam"


def test_bad_entry_and_unknown_schema() -> None:
    export = json.loads(twofauth_json())
    export["data"][0]["period"] = [30]
    with pytest.raises(EntryError, match=r"^account 1: period is not a whole number"):
        twofauth.read(json.dumps(export).encode())
    export["schema"] = 2
    with pytest.raises(ImportFileError, match="schema 2"):
        twofauth.read(json.dumps(export).encode())


def test_random_inputs_raise_only_import_errors() -> None:
    outcome = fuzz(twofauth.read, [twofauth_json(hotp=True)], count=2500)
    assert outcome["parsed"] > 100 and outcome["refused"] > 100
