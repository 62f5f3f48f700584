from fxquant.cli.main import main

raise SystemExit(main())
