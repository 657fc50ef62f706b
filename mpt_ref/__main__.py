import sys

from mpt_ref.cli import main

sys.exit(main())
