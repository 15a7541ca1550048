from totp_service.cli import main

raise SystemExit(main())
