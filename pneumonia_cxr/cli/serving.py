"""The commands that put the model in front of people: `serve` (a page and an HTTP API), `web`
(the page as a static folder that scores in the browser) and `dicom-node` (a DICOM node a PACS
sends films to and gets results back from)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumonia_cxr.cli.common import (
    _add_device_arg,
    _add_engine_arg,
    _add_model_path_arg,
    _model_path_or_shipped,
    _positive_int,
)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from pneumonia_cxr.serve.app import TOKEN_ENV_VAR, check_exposure, serve
    from pneumonia_cxr.serve.service import ServeConfig

    token = args.api_token or os.environ.get(TOKEN_ENV_VAR) or None
    try:
        check_exposure(args.host, token)
    except PermissionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.api_token:
        print(
            f"warning: --api_token is visible to other users in the process list; prefer "
            f"{TOKEN_ENV_VAR}",
            file=sys.stderr,
        )
    config = ServeConfig(
        api_token=token,
        model_path=Path(args.model_path) if args.model_path else None,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_in_flight=args.max_in_flight,
        device=args.device,
        engine=args.engine,
    )
    print(f"serving on http://{args.host}:{args.port}/ (API docs: /docs)", file=sys.stderr)
    serve(config, host=args.host, port=args.port)
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from pneumonia_cxr.web import write_web_folder

    written = write_web_folder(args.out_dir, _model_path_or_shipped(args.model_path))
    print(
        f"{written['out_dir']}: {written['files']} files, {written['bytes'] / 2**20:.1f} MB "
        f"(model sha256 {written['sha256'][:16]}...). Serve it with any static file server, "
        f"e.g. `python3 -m http.server --directory {written['out_dir']}`, and open the page; "
        "images are scored in the browser and never leave it."
    )
    return 0


def cmd_dicom_node(args: argparse.Namespace) -> int:
    import logging

    from pneumonia_cxr.dicom_node import NodeConfig, parse_destination, run_node
    from pneumonia_cxr.errors import NodeConfigError

    logging.getLogger("pneumonia_cxr.dicom_node").setLevel(logging.INFO)  # a line per study
    optional = {
        name: Path(getattr(args, name)) if getattr(args, name) else None
        for name in ("tls_cert", "tls_key", "tls_ca", "dest_tls_ca", "model_path")
    }
    try:
        config = NodeConfig(
            work_dir=Path(args.work_dir),
            allowed_callers=tuple(args.allow),
            destination=parse_destination(args.dest),
            ae_title=args.ae_title,
            host=args.host,
            port=args.port,
            health_port=args.health_port,
            retries=args.retries,
            max_bytes=int(args.max_mb * 1024 * 1024),
            plain_on_network=args.plain_on_network,
            **optional,
        )
    except ValueError as error:
        raise NodeConfigError(str(error)) from error
    run_node(config)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`serve`, `web` and `dicom-node`."""
    serve = sub.add_parser("serve", help="a web page and HTTP API: drop an X-ray, get the answer")
    _add_model_path_arg(serve)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="default loopback only; any other address needs an access token",
    )
    serve.add_argument(
        "--api_token",
        help="access token (prefer the environment variable PNEUMONIA_CXR_API_TOKEN)",
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max_upload_mb", type=float, default=32.0, help="per request")
    serve.add_argument("--max_in_flight", type=_positive_int, default=64)
    _add_device_arg(serve)
    _add_engine_arg(serve)
    serve.set_defaults(func=cmd_serve)

    web = sub.add_parser(
        "web", help="the page as a static folder that scores in the browser (no server needed)"
    )
    web.add_argument("out_dir", help="folder to write (new, empty, or written by `web` before)")
    _add_model_path_arg(web)
    web.set_defaults(func=cmd_web)

    node = sub.add_parser(
        "dicom-node",
        help="a DICOM node: a PACS sends CR/DX films, it sends back a DICOM SR and heatmap",
    )
    node.add_argument("work_dir", help="its queue (SQLite), received films and results")
    node.add_argument(
        "--allow", action="append", required=True, metavar="AE_TITLE",
        help="a calling AE title allowed to send (repeat for several)",
    )  # fmt: skip
    node.add_argument(
        "--dest", required=True, metavar="AE@HOST:PORT|URL",
        help="where results go: a PACS by C-STORE (ORTHANC@127.0.0.1:4242) or a DICOMweb "
        "server by STOW-RS (http://127.0.0.1:8042/dicom-web; a bearer token from "
        "$PNEUMONIA_CXR_DEST_TOKEN)",
    )  # fmt: skip
    node.add_argument("--ae_title", default="PCXNODE")
    node.add_argument(
        "--host", default="127.0.0.1",
        help="default loopback only; another interface needs TLS or --plain_on_network",
    )  # fmt: skip
    node.add_argument("--port", type=int, default=11112)
    node.add_argument("--health_port", type=int, help="GET /health on this loopback port")
    node.add_argument("--retries", type=_positive_int, default=3)
    node.add_argument(
        "--max_mb", type=float, default=512.0,
        help="a dataset larger than this is refused as it arrives (its association aborted)",
    )  # fmt: skip
    node.add_argument("--tls_cert", help="the node's certificate (PEM): callers must use TLS")
    node.add_argument("--tls_key", help="its private key (PEM)")
    node.add_argument("--tls_ca", help="CA (PEM) callers' certificates must chain to (mutual TLS)")
    node.add_argument(
        "--dest_tls_ca", help="CA (PEM) of the destination: C-STORE over TLS, verified"
    )
    node.add_argument(
        "--plain_on_network", action="store_true",
        help="listen on another interface without TLS (only where TLS is terminated elsewhere)",
    )  # fmt: skip
    _add_model_path_arg(node)
    node.set_defaults(func=cmd_dicom_node)
