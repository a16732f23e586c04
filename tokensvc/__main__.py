"""`python -m tokensvc` runs the CLI."""

from tokensvc.cli import main

main()
