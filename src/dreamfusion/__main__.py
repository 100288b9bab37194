"""`python -m dreamfusion ...`: the same as the `dreamfusion` command."""

from dreamfusion.commands import main

raise SystemExit(main())
