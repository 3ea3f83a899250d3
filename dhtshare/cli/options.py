"""The flags several commands share: one spelling, one help text, everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Node data directory [env: DHTSHARE_DATA_DIR; "
                 "default: ~/.local/share/dhtshare]", show_default=False),
]
HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on (UDP and TCP).")]
PortOpt = Annotated[int, typer.Option("--port", help="Port for both the DHT (UDP) and "
                                      "chunk transfers (TCP); 0 picks a free one.")]
PeerOpt = Annotated[
    list[str] | None,
    typer.Option("--peer", help="HOST:PORT of a node to join through (repeatable) "
                 "[env: DHTSHARE_PEERS, comma-separated].", show_default=False),
]
AdvertiseOpt = Annotated[
    str | None,
    typer.Option("--advertise", help="Address this node names itself by in the records it "
                 "keeps; other nodes always record it at the address its packets come from.",
                 show_default=False),
]
MaxStorageOpt = Annotated[
    str,
    typer.Option("--max-storage", help="Most replica data this node keeps for the network "
                 "(bytes or K/M/G suffix; 0: no limit but the disk). A full node declines."),
]
UploadRateOpt = Annotated[
    str,
    typer.Option("--max-upload-rate", help="Most bytes per second this node sends to peers, "
                 "all links together (K/M/G suffix; 0: no limit). Change it later with "
                 "'dhtshare limit'."),
]
DownloadRateOpt = Annotated[
    str,
    typer.Option("--max-download-rate", help="Most bytes per second this node receives from "
                 "peers, all links together (K/M/G suffix; 0: no limit)."),
]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the result.")]
HashArg = Annotated[str, typer.Argument(metavar="HASH", help="Manifest hash.")]
