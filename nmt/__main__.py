"""`python -m nmt <command> ...`: the same as the `nmt` script.

`nmt.cli.main` guards everything it imports, but a Ctrl-C can land sooner, while Python
imports `nmt.cli` itself (a slow start on a loaded machine): that ends the same way.
"""

from nmt.errors import exit_interrupted

try:
    from nmt.cli import main
except KeyboardInterrupt:
    exit_interrupted()

main()
