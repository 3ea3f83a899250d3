"""``python -m dhtshare`` runs the command-line interface."""

from dhtshare.entry import main

main()
