import sys

from synthpart.cli import main

sys.exit(main())
