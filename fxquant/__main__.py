from fxquant.cli import main

raise SystemExit(main())
