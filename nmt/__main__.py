"""`python -m nmt <command> ...`: the same as the `nmt` script.

`nmt.cli.main` guards everything it imports, but a Ctrl-C can land sooner, while Python
imports `nmt.cli` itself (a slow start on a loaded machine): that ends the same way, with one
line and status 130 (`nmt.cli.EXIT_INTERRUPTED`) instead of a traceback.
"""

import sys

try:
    from nmt.cli import main
except KeyboardInterrupt:
    print("nmt: interrupted", file=sys.stderr)
    sys.exit(130)

main()
