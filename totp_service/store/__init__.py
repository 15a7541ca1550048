"""Where secrets are kept: the store interface (`base.py`), one file per backend (`sqlite.py`),
the master key and sealing (`crypto.py`), and opening a store from `Settings` (`open.py`).

May import: `otp`, `identifiers`, `config`. Nothing above this package is known here.
"""

from totp_service.identifiers import InvalidIdentifier
from totp_service.store.base import (
    CLAIM_PRUNE_INTERVAL_SECONDS,
    CLAIM_RETENTION_SECONDS,
    STORE_INPUT_ERRORS,
    AuditEntry,
    Binding,
    Claim,
    KeyRotated,
    SchemaTooNew,
    SecretExists,
    SecretMeta,
    SecretNotFound,
    Store,
    StoreBusy,
    StoreError,
    StoreExists,
    StoreMissing,
    StoreUnavailable,
)

__all__ = [
    "CLAIM_PRUNE_INTERVAL_SECONDS", "CLAIM_RETENTION_SECONDS", "STORE_INPUT_ERRORS", "AuditEntry", "Binding",
    "Claim", "InvalidIdentifier", "KeyRotated", "SchemaTooNew", "SecretExists", "SecretMeta", "SecretNotFound",
    "Store", "StoreBusy", "StoreError", "StoreExists", "StoreMissing", "StoreUnavailable",
]
