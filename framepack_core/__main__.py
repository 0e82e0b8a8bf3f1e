import sys

from framepack_core.cli import main

sys.exit(main())
