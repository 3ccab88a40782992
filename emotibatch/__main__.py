"""`python -m emotibatch` runs the CLI."""

from emotibatch.cli import cli

cli()
