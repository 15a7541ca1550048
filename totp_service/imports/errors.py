"""The one exception family every importer raises, so a caller (the CLI, a fuzzer) catches one type.

Messages name a position and a reason, never a secret or a password.
"""

from __future__ import annotations

from totp_service.otp import OtpFormatError


class ImportFileError(OtpFormatError):
    """An export file that cannot be imported as given; nothing from it may be stored."""


class UnknownFormat(ImportFileError):
    """The bytes match none of the formats we read."""


class PasswordRequired(ImportFileError):
    """The export is encrypted and no password was given."""


class WrongPassword(ImportFileError):
    """The password does not open the export (or the file was changed after it was written)."""


class EntryError(ImportFileError):
    """One entry is malformed; the message starts with where it is (line, index, account)."""

    def __init__(self, position: str, reason: str) -> None:
        super().__init__(f"{position}: {reason}")
        self.position = position
        self.reason = reason
