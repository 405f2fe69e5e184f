from __future__ import annotations

import sys

from trioproxy.cli import main

sys.exit(main())
