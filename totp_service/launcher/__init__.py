"""Who pushes codes and starts runs: the Skyvern client (httpx), run requests, the pusher, and
launching / following runs.

May import: `otp`, `identifiers`, `signing`, `config`, `store`, `imports`. Never `service`,
`simulator` or `cli`.
"""
