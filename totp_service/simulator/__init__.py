"""A Skyvern stand-in (Starlette) that behaves as shared/SKYVERN.md states, for the tests and the
offline demo: options and shared rules, run-request validation, runs and their polling, HTTP app.

May import: `otp`, `identifiers`, `signing` only: it must not agree with our code by sharing it.
"""
