"""``python -m demo``: the same as ``regionmir-demo`` and ``make demo``."""

from demo.run import main

raise SystemExit(main())
