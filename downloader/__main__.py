"""`python -m downloader` runs the CLI."""

import sys

from downloader.cli import main

sys.exit(main())
