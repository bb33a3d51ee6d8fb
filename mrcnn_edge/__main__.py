import sys

from mrcnn_edge.commands.cli import main

sys.exit(main())
