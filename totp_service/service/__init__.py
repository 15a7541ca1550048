"""Who serves codes: the Starlette/uvicorn service. The pull rules and endpoint (its ASGI form and
serve's own HTTP protocol), the admin API, the audit writer, metrics, OpenAPI, TLS checks.

May import: `otp`, `identifiers`, `signing`, `config`, `store`, `imports`. Never `launcher`,
`simulator` or `cli`.
"""
