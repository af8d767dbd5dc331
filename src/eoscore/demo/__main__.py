"""``python -m eoscore.demo`` (same as ``eoscore demo``)."""

import sys

from eoscore.demo.cli import main

sys.exit(main())
