import sys

from lmgolf.cli import main

sys.exit(main())
