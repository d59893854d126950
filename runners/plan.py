"""`python -m runners.plan`: A plan's cost before launching it (runners.analysis.plan)."""

import sys

from runners.analysis.plan import main

if __name__ == "__main__":
    sys.exit(main())
