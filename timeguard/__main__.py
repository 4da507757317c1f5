from timeguard.cli import main

raise SystemExit(main())
