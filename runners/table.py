"""`python -m runners.table`: Tables from run records (runners.analysis.table)."""

import sys

from runners.analysis.table import main

if __name__ == "__main__":
    sys.exit(main())
