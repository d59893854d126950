"""`python -m runners.report`: a results page from run records (runners.analysis.report)."""

import sys

from runners.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
