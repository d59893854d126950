"""`python -m runners.pilot`: The learning rate a pilot sweep chooses per method (runners.analysis.pilot)."""

import sys

from runners.analysis.pilot import main

if __name__ == "__main__":
    sys.exit(main())
