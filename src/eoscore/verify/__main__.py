"""``python -m eoscore.verify MODULE:FUNCTION`` (same as ``eoscore verify``)."""

import sys

from eoscore.verify.cli import main

sys.exit(main())
