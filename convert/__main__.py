"""`python -m tinygptv_native.convert phi2 ...` / `... tinygptv ...`: the same as `tinygptv convert`."""
import sys

from .cli import main

sys.exit(main())
