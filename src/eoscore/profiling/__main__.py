"""``python -m eoscore.profiling profile|capacity ...``."""

import sys

from eoscore.profiling.cli import main

sys.exit(main())
