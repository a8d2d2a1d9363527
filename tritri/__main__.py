import sys

from tritri.cli import main

sys.exit(main())
