"""`python -m difusor` runs the `difusor` command."""

import sys

from difusor.cli import main

sys.exit(main())
