"""`python -m dreamfusion ...`: the same as the `dreamfusion` command."""

from dreamfusion.cli import main

raise SystemExit(main())
