"""``python -m consistcam`` (what ``torchrun -m consistcam`` runs) is the ``consistcam`` command."""

import sys

from consistcam.cli import main

sys.exit(main())
