"""`python -m nmt <command> ...`: the same as the `nmt` script."""

from nmt.cli import main

main()
