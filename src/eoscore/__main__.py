import sys

from eoscore.cli import main

sys.exit(main())
