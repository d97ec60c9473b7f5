import sys

from contourqa.cli import main

sys.exit(main())
