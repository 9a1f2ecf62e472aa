"""`python -m wconv_deploy` runs the CLI."""

from wconv_deploy.cli import main

main()
