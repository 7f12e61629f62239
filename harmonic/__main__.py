import sys

from harmonic.cli import main

sys.exit(main())
