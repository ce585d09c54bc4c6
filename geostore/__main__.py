"""``python -m geostore`` is the ``geostore`` command."""

import sys

from geostore.cli.main import main

sys.exit(main())
