"""Secret formats, refusals and code computation, checked against published vectors."""

from __future__ import annotations

import base64

import pyotp
import pytest

from totp_service import imports, otp

RFC_SECRETS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
# RFC 6238 Appendix B: time -> (SHA1, SHA256, SHA512), 8 digits, 30 s period
RFC_VECTORS = {
    59: ("94287082", "46119246", "90693936"),
    1111111109: ("07081804", "68084774", "25091201"),
    1111111111: ("14050471", "67062674", "99943326"),
    1234567890: ("89005924", "91819424", "93441116"),
    2000000000: ("69279037", "90698825", "38618901"),
    20000000000: ("65353130", "77737706", "47863826"),
}
B32 = "JBSWY3DPEHPK3PXP"  # 80-bit secret, as many sites still issue


@pytest.mark.parametrize("when", sorted(RFC_VECTORS))
@pytest.mark.parametrize("index,algorithm", list(enumerate(("SHA1", "SHA256", "SHA512"))))
def test_rfc6238_vectors(when: int, index: int, algorithm: str) -> None:
    spec = otp.TotpSpec(RFC_SECRETS[algorithm], algorithm=algorithm, digits=8)
    assert otp.code_at(spec, when) == RFC_VECTORS[when][index]


def test_uri_with_issuer_label_and_percent_encoding() -> None:
    spec = imports.parse_uri("otpauth://totp/ACME%20Co:alice%40example.com?secret=jbswy3dpehpk3pxp&issuer=ACME%20Co")
    assert spec.issuer == "ACME Co"
    assert spec.account == "alice@example.com"
    assert spec.secret == base64.b32decode(B32)
    assert (spec.algorithm, spec.digits, spec.period) == ("SHA1", 6, 30)


def test_uri_parameters_and_issuer_from_label_only() -> None:
    spec = imports.parse_uri(f"otpauth://totp/Site:bob?secret={B32}&algorithm=sha256&digits=8&period=60")
    assert (spec.issuer, spec.account, spec.algorithm, spec.digits, spec.period) == ("Site", "bob", "SHA256", 8, 60)


@pytest.mark.parametrize("text", ["jbsw y3dp ehpk 3pxp", "JBSWY3DPEHPK3PXP====", "jbswy3dp-ehpk3pxp", " JBSWY3DPEHPK3PXP\n"])
def test_base32_forms_apps_accept(text: str) -> None:
    assert imports.decode_base32(text) == base64.b32decode(B32)


def test_80_bit_secret_codes_match_an_independent_hotp() -> None:
    spec = imports.spec_from_base32(B32)
    assert len(spec.secret) == 10
    for t in (0, 59, 1_700_000_000, 1_700_000_031):
        assert otp.code_at(spec, t) == _hotp_reference(spec.secret, t // 30)


def test_codes_match_pyotp_for_long_secrets() -> None:
    b32 = base64.b32encode(RFC_SECRETS["SHA256"]).decode()
    spec = imports.spec_from_base32(b32, algorithm="SHA256")
    import hashlib

    assert otp.code_at(spec, 1_700_000_000) == pyotp.TOTP(b32, digest=hashlib.sha256).at(1_700_000_000)


def _hotp_reference(secret: bytes, counter: int) -> str:
    import hashlib
    import hmac
    import struct

    digest = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 10**6:06d}"


@pytest.mark.parametrize(
    "uri,message",
    [
        (f"otpauth://hotp/x?secret={B32}&counter=1", "HOTP"),
        ("otpauth://totp/x?secret=", "empty"),
        ("otpauth://totp/x?issuer=a", "no secret"),
        (f"otpauth://totp/x?secret={B32}&algorithm=MD5", "unknown algorithm"),
        (f"otpauth://totp/x?secret={B32}&digits=5", "digits must be 6, 7 or 8"),
        (f"otpauth://totp/x?secret={B32}&digits=9", "digits must be 6, 7 or 8"),
        (f"otpauth://totp/x?secret={B32}&period=0", "period must be"),
        (f"otpauth://totp/x?secret={B32}&period=-30", "period must be"),
        (f"otpauth://totp/x?secret={B32}&period=abc", "period must be a whole number"),
        ("otpauth://totp/x?secret=NOT!BASE32", "not valid base32"),
        ("otpauth://totp/x?secret=AAAAAAA", "too short"),
        ("https://example.com/?secret=" + B32, "not an otpauth URI"),
        ("otpauth://foo/x?secret=" + B32, "unknown otpauth type"),
    ],
)
def test_refusals_say_which(uri: str, message: str) -> None:
    with pytest.raises(otp.OtpFormatError, match=message) as info:
        imports.parse_uri(uri)
    assert B32 not in str(info.value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def migration_uri(accounts: list[dict[str, object]]) -> str:
    """Build a Google Authenticator export the way the app encodes it (protobuf, base64, URL)."""
    from urllib.parse import quote

    payload = b""
    for account in accounts:
        entry = (
            _field(1, account["secret"])  # type: ignore[arg-type]
            + _field(2, str(account["name"]).encode())
            + _field(3, str(account.get("issuer", "")).encode())
            + _field(4, int(account.get("algorithm", 1)))  # type: ignore[arg-type]
            + _field(5, int(account.get("digits", 1)))  # type: ignore[arg-type]
            + _field(6, int(account.get("type", 2)))  # type: ignore[arg-type]
        )
        payload += _field(1, entry)
    payload += _field(2, 1) + _field(3, 1) + _field(4, 0) + _field(5, 12345)
    return "otpauth-migration://offline?data=" + quote(base64.b64encode(payload).decode())


def test_google_authenticator_export_with_many_accounts() -> None:
    uri = migration_uri(
        [
            {"secret": b"A" * 20, "name": "alice@example.com", "issuer": "ACME"},
            {"secret": b"B" * 32, "name": "Shop:bob", "algorithm": 2, "digits": 2},
        ]
    )
    first, second = imports.parse_migration(uri)
    assert (first.account, first.issuer, first.secret, first.digits) == ("alice@example.com", "ACME", b"A" * 20, 6)
    assert (second.account, second.issuer, second.algorithm, second.digits) == ("bob", "Shop", "SHA256", 8)


def test_google_authenticator_export_refuses_hotp_and_garbage() -> None:
    with pytest.raises(otp.OtpFormatError, match="HOTP"):
        imports.parse_migration(migration_uri([{"secret": b"A" * 20, "name": "x", "type": 1}]))
    with pytest.raises(otp.OtpFormatError, match="not valid base64"):
        imports.parse_migration("otpauth-migration://offline?data=***")
    with pytest.raises(otp.OtpFormatError, match="truncated"):
        imports.parse_migration("otpauth-migration://offline?data=" + base64.b64encode(b"\x0a\x50abc").decode())


def test_window_timing() -> None:
    spec = imports.spec_from_base32(B32, period=30)
    assert otp.window_start(spec, 1_700_000_015.5) == 1_700_000_010
    assert otp.seconds_left(spec, 1_700_000_015.5) == pytest.approx(24.5)


def test_spec_repr_hides_secret() -> None:
    spec = imports.spec_from_base32(B32)
    assert "secret" not in repr(spec) and B32 not in repr(spec) and repr(spec.secret) not in repr(spec)
