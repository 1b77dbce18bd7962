"""``python -m biotransformer`` runs the command line."""

import sys

from biotransformer.cli import main

sys.exit(main())
