from timeguard.cli.main import main

raise SystemExit(main())
