"""The `totp-service` command: argparse front for the store commands (main.py), serve (serve.py),
launch / push / url (launch.py) and the offline demo (demo.py). Errors become one line here.

May import everything below it. Nothing imports `cli`.
"""

from totp_service.cli.main import main

__all__ = ["main"]
