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
LogLevelOpt = Annotated[
    str | None,
    typer.Option("--log-level", help="debug (every chunk, chunk map and DHT step, with its "
                 "peer), info (a line per fetch, publish, peer and repair), warning or error. "
                 "Also $DHTSHARE_LOG_LEVEL; default warning, info for a node.",
                 show_default=False),
]
LogFormatOpt = Annotated[
    str | None,
    typer.Option("--log-format", help="text, or json: one object per line with stable keys "
                 "(ts, level, logger, msg, event, peer, ...). Also $DHTSHARE_LOG_FORMAT.",
                 show_default=False),
]
LogFileOpt = Annotated[
    Path | None,
    typer.Option("--log-file", help="Log to this file instead of stderr, rotated at 10 MiB "
                 "(5 old files kept). Also $DHTSHARE_LOG_FILE.", show_default=False),
]
VerboseOpt = Annotated[int, typer.Option(
    "--verbose", "-v", count=True, metavar="", show_default=False,
    help="More logging, counted: -v for info, -vv for debug.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the result.")]
HashArg = Annotated[str, typer.Argument(metavar="HASH", help="Manifest hash.")]
MetricsPortOpt = Annotated[
    int,
    typer.Option("--metrics-port", help="Serve Prometheus metrics at "
                 "http://METRICS_HOST:PORT/metrics (bytes by link direction, chunks, bans, DHT "
                 "lookups, peers, storage, repair; 0: off)."),
]
MetricsHostOpt = Annotated[
    str,
    typer.Option("--metrics-host", help="Address the metrics endpoint listens on "
                 "(with --metrics-port)."),
]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress display (it is shown only on a terminal anyway).")]
ShowPeersOpt = Annotated[bool, typer.Option(
    "--peers", help="Under the progress bar, a line per peer sending: its address, rate "
    "and chunks.")]
