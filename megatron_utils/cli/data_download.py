"""`megatron data download-ffpp`: fetch FaceForensics++ with the user's own download script, resume an
interrupted download and verify the result against the official file lists."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..datasets.ffpp_download import (
    DEFAULT_METHODS,
    PART_FOLDERS,
    SERVERS,
    DownloadConfig,
    DownloadReport,
    download_ffpp,
    verify_download,
)


def run_download(args: argparse.Namespace) -> int:
    config = DownloadConfig(script=Path(args.script), out=Path(args.out), compression=args.compression,
                            methods=tuple(args.methods), server=args.server, accept_tos=args.accept_tos)
    if args.verify_only:
        report = DownloadReport(checks=verify_download(config.out, config.parts(), config.compression))
    else:
        report = download_ffpp(config)
    print(report.summary())
    return 0 if report.complete else 1


def register(data_commands: argparse._SubParsersAction) -> None:
    parser = data_commands.add_parser(
        "download-ffpp", help="download FaceForensics++ with your copy of its official download script",
        description="Runs your faceforensics_download_v4.py (sent by the FF++ authors after their request "
                    "form) for the originals and each method, resumes interrupted downloads and verifies "
                    "the files against the official lists. Exit 0 when complete, 1 when anything is missing.")
    parser.add_argument("--script", required=True, help="path of your FF++ download script")
    parser.add_argument("--out", required=True, help="dataset root to download into")
    parser.add_argument("--compression", default="c23", choices=["raw", "c0", "c23", "c40"])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                        choices=[part for part in PART_FOLDERS if part != "original"],
                        help="manipulation methods, from %(choices)s (the originals are always fetched; "
                             "default: %(default)s)")
    parser.add_argument("--server", choices=SERVERS, help="download server (default: the script's own)")
    parser.add_argument("--accept-tos", action="store_true",
                        help="answer the script's terms-of-use prompt for you: you confirm that you "
                             "agreed to the FaceForensics++ terms of use")
    parser.add_argument("--verify-only", action="store_true", help="check what is on disk, download nothing")
    parser.set_defaults(handler=run_download)
