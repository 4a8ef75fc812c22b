import sys

from voltana.cli import main

sys.exit(main())
