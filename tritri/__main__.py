import sys

from tritri.cli import console_main

sys.exit(console_main())
