"""``python -m spikecast``: the same as the ``spikecast`` command."""

import sys

from spikecast.cli import main

if __name__ == "__main__":
    sys.exit(main())
