"""``python -m dhtshare`` runs the command-line interface."""

from dhtshare.cli.entry import main

main()
