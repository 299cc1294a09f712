"""`megatron serve`: the web page and JSON API (FastAPI under uvicorn) that score uploads with a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..serve.config import API_KEY_ENV, ServeConfig

EPILOG = f"""\
The page is at http://HOST:PORT/ and the API's documentation at /docs. Without an API key (${API_KEY_ENV} or
--api-key-file) the service binds only a loopback address unless --insecure is given. Uploads are checked by
their content and refused with a 4xx and the reason when they break a limit. Jobs are kept in a store
(--store, default RUN_DIR/serve-store) and outlive the process: restarted on the same store, the service
finishes the jobs it had accepted."""


class RemovedApiKeyFlag(argparse.Action):
    """--api-key is refused: a key on the command line is visible to every user of the machine (ps)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        parser.error(f"--api-key was removed: a key on the command line is visible to every user of this "
                     f"machine; set ${API_KEY_ENV} or give --api-key-file")


def read_api_key(path: Path) -> str:
    """The key in `path` (surrounding whitespace ignored), or a ValueError naming the file and the reason."""
    try:
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--api-key-file {path}: cannot read it ({error})") from error
    if not key:
        raise ValueError(f"--api-key-file {path}: the file is empty")
    return key


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..core.memory import limit_malloc_arenas
    from ..serve.app import create_app

    config = ServeConfig(
        run=args.run, checkpoint=args.checkpoint, host=args.host, port=args.port, workers=args.workers,
        queue_size=args.queue, max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_duration_s=args.max_duration, max_side=args.max_side, result_ttl_s=args.ttl * 60,
        max_store_bytes=int(args.max_store_mb * 2**20),
        store=args.store, api_key=read_api_key(args.api_key_file) if args.api_key_file else None,
        insecure=args.insecure, annotate=not args.no_annotate,
        explain=args.explain, device=args.device)
    config.check_exposure()
    # Upload threads come and go; capped arenas keep the heap from growing one arena per new thread.
    limit_malloc_arenas(2)
    print(f"serving {config.checkpoint_path} on http://{config.host}:{config.port}/ (API docs: /docs), jobs "
          f"in {config.store_folder}")
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    defaults = ServeConfig(run="")
    parser = commands.add_parser("serve", help="web page and JSON API that score uploaded videos",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, metavar="RUN_DIR", help="run folder of `megatron "
                        "train`, or a checkpoint folder")
    parser.add_argument("--checkpoint", help="checkpoint folder inside the run (default: best)")
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="jobs scored at once, sharing "
                        "one loaded model")
    parser.add_argument("--queue", type=int, default=defaults.queue_size, help="jobs waiting beyond those; "
                        "more get 429 with Retry-After")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20)
    parser.add_argument("--max-duration", type=float, default=defaults.max_duration_s, metavar="SECONDS")
    parser.add_argument("--max-side", type=int, default=defaults.max_side, metavar="PIXELS")
    parser.add_argument("--ttl", type=float, default=defaults.result_ttl_s / 60, metavar="MINUTES",
                        help="results are deleted this long after their job finished")
    parser.add_argument("--store", type=Path, metavar="DIR", help="the job store: its database, uploads and "
                        "results; a service restarted on it finishes the jobs it had accepted (default: "
                        "RUN_DIR/serve-store)")
    parser.add_argument("--max-store-mb", type=float, default=defaults.max_store_bytes / 2**20,
                        help="disk cap of the store: beyond it the oldest results are deleted early, then "
                        "uploads get 503 until jobs finish")
    parser.add_argument("--api-key-file", type=Path, metavar="FILE", help=f"require the key in this file in "
                        f"header X-API-Key (default: ${API_KEY_ENV}, if set)")
    parser.add_argument("--api-key", nargs="?", action=RemovedApiKeyFlag, help=argparse.SUPPRESS)
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a key")
    parser.add_argument("--no-annotate", action="store_true", help="skip the annotated copy and timeline")
    parser.add_argument("--explain", action="store_true", help="explain each verdict: which frames drove it "
                        "and Grad-CAM heat maps of the deciding frames, shown on the page and overlaid on "
                        "the annotated video (adds seconds per job)")
    parser.add_argument("--device", default=defaults.device)
    parser.set_defaults(handler=run)
