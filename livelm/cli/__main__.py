"""`python -m livelm.cli ...` = `livelm ...`."""
import sys

from livelm.cli import main

sys.exit(main())
