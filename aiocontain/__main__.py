import sys

from aiocontain.cli import main

sys.exit(main())
