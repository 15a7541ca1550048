"""One detector over every format, otpauth lines and Google exports included."""

from __future__ import annotations

import pytest

from totp_service.imports import uri_lines
from totp_service.imports.detect import FORMAT_NAMES, detect, read_export
from totp_service.imports.errors import EntryError, ImportFileError, UnknownFormat

import import_fixtures as fx
from import_fuzz import fuzz

BUILDERS = {
    "aegis": lambda: fx.aegis_encrypted(n=2**10),
    "2fas": fx.twofas_encrypted,
    "andotp": lambda: fx.andotp_encrypted(iterations=1000),
    "bitwarden": fx.bitwarden_json,
    "bitwarden-csv": fx.bitwarden_csv,
    "freeotp": fx.freeotp_json,
    "2fauth": fx.twofauth_json,
    "otpauth": fx.otpauth_lines,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_each_format_is_detected_and_read(name: str) -> None:
    data = BUILDERS[name]()
    assert detect(data) == name
    result = read_export(data, password=fx.PASSWORD)
    assert result.format == name
    fx.check_entries(result.entries)


def test_every_format_has_a_builder() -> None:
    assert set(BUILDERS) == set(FORMAT_NAMES)


def test_otpauth_lines_with_a_google_export() -> None:
    data = fx.otpauth_lines(fx.ACCOUNTS[:1], hotp=True) + fx.google_migration(fx.ACCOUNTS[:1] + fx.ACCOUNTS[2:])
    entries = uri_lines.read(data)
    fx.check_entries(entries, fx.ACCOUNTS[:1] * 2 + fx.ACCOUNTS[2:])
    fx.check_hotp_unsupported(entries)
    assert [e.position for e in entries] == ["line 3", "line 4", "line 5 account 1", "line 5 account 2"]


def test_google_export_with_a_hotp_account() -> None:
    thirty_seconds = [a for a in fx.ACCOUNTS if a.period == 30]  # all Google's export can hold
    entries = uri_lines.read(fx.google_migration(thirty_seconds, hotp=True))
    fx.check_entries(entries, thirty_seconds)
    fx.check_hotp_unsupported(entries)
    assert entries[-1].position == "line 1 account 3"


def test_bad_uri_names_its_line() -> None:
    with pytest.raises(EntryError, match=r"^line 2 \(C:d\): "):
        uri_lines.read(b"otpauth://totp/A:b?secret=JBSWY3DPEHPK3PXP\notpauth://totp/C:d?secret=!!\n")


def test_forced_format_and_unknown_files() -> None:
    with pytest.raises(UnknownFormat, match="give --format"):
        detect(b"hello world\n")
    with pytest.raises(UnknownFormat, match="no supported app"):
        detect(b'{"hello": "world"}')
    with pytest.raises(UnknownFormat, match="unknown format"):
        read_export(fx.aegis_plain(), "keepass")
    with pytest.raises(ImportFileError):
        read_export(fx.aegis_plain(), "freeotp")  # forced to the wrong format: refused, not misread


def test_a_file_without_totp_entries_is_an_error() -> None:
    with pytest.raises(ImportFileError, match="no TOTP entries"):
        read_export(fx.bitwarden_json(accounts=()))


def test_random_inputs_to_the_uri_lines_reader() -> None:
    seeds = [fx.otpauth_lines(hotp=True), fx.google_migration(hotp=True), fx.google_migration(fx.ACCOUNTS[:1])]
    outcome = fuzz(uri_lines.read, seeds, count=2500, seed=22)
    assert outcome["parsed"] > 100 and outcome["refused"] > 100


def test_random_inputs_through_the_one_entry() -> None:
    seeds = [BUILDERS[name]() for name in sorted(BUILDERS)] + [fx.google_migration()]

    def read(data: bytes, password: str | None) -> list:
        return read_export(data, password=password).entries

    outcome = fuzz(read, seeds, count=3000, seed=21)
    assert outcome["parsed"] > 100 and outcome["refused"] > 1000


def test_a_malformed_host_is_a_format_error_everywhere() -> None:
    from totp_service.imports import OtpFormatError, parse_migration, parse_uri

    for parse, text in ((parse_uri, "otpauth://[totp/A:b?secret=JBSWY3DPEHPK3PXP"),
                        (parse_migration, "otpauth-migration://[offline?data=AAAA")):
        with pytest.raises(OtpFormatError, match="host part is malformed"):
            parse(text)
