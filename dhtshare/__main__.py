"""``python -m dhtshare`` runs the command-line interface."""

from dhtshare.cli import main

main()
