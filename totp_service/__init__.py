"""totp-service: self-hosted TOTP codes for Skyvern agent runs."""

__version__ = "0.1.0"
