import sys

from framepack_core.cli.main import main

sys.exit(main())
