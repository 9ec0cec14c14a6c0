"""The `wanka agent` subcommand: run the GPU health agent on this node."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from wanka.agent.agent import Agent, NodeWriter, PrintWriter
from wanka.agent.probes import APPLICATION_XIDS, Probe

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `agent` subcommand."""
    parser = subparsers.add_parser(
        "agent",
        help="run the GPU health agent (DaemonSet on GPU nodes)",
        description=__doc__,
    )
    parser.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="the Node to write onto (default: $NODE_NAME, set from the downward API)",
    )
    parser.add_argument("--probe", choices=("nvml", "file"), default="nvml",
                        help="read devices through NVML, or from --fault-file for tests and demos (default nvml)")
    parser.add_argument("--fault-file", help="JSON fault file for --probe file (see docs)")
    parser.add_argument(
        "--interval", type=float, default=30.0, help="seconds between probes and heartbeats"
    )
    parser.add_argument(
        "--expected-devices",
        type=int,
        default=None,
        help="devices the node should have (default: the most seen since start)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, then ~)")
    parser.add_argument(
        "--xid-hold-seconds",
        type=float,
        default=900.0,
        help="how long a recoverable XID keeps its device unhealthy",
    )
    parser.add_argument(
        "--ignored-xids",
        default=",".join(str(x) for x in sorted(APPLICATION_XIDS)),
        help="comma-separated XIDs that are application errors, not device faults",
    )
    parser.add_argument(
        "--max-temperature", type=int, default=None, help="C (default: NVML slowdown threshold)"
    )
    parser.add_argument(
        "--expected-nvlinks", type=int, default=None, help="NVLinks that should be up per GPU"
    )
    parser.add_argument("--once", action="store_true", help="probe and write once, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be written; touch no API"
    )
    parser.set_defaults(func=run_agent)


def run_agent(args: argparse.Namespace) -> int:
    """Build the probe and writer from flags and run the loop until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    probe = _build_probe(args)
    if probe is None:
        return 2
    writer: NodeWriter
    if args.dry_run:
        writer = PrintWriter()
    else:
        if not args.node_name:
            print("wanka agent: --node-name or $NODE_NAME is required", file=sys.stderr)
            return 2
        # Imported here so --dry-run and the tests never load the Kubernetes client.
        from wanka.agent.node_writer import KubeNodeWriter

        writer = KubeNodeWriter.connect(args.node_name, args.kubeconfig)
    agent = Agent(probe, writer, interval=args.interval, expected_devices=args.expected_devices)
    if args.once:
        try:
            agent.run_once()
        finally:
            probe.close()
        return 0
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.run(stop)
    return 0


def _build_probe(args: argparse.Namespace) -> Probe | None:
    if args.probe == "file":
        if not args.fault_file:
            print("wanka agent: --probe file needs --fault-file", file=sys.stderr)
            return None
        from wanka.agent.file_probe import FileProbe

        return FileProbe(args.fault_file)
    from wanka.agent.nvml_probe import NvmlProbe, load_nvml

    try:
        nvml = load_nvml()
    except ImportError:
        print(
            "wanka agent: --probe nvml needs nvidia-ml-py (pip install 'wanka[nvml]')",
            file=sys.stderr,
        )
        return None
    try:
        ignored = [int(x) for x in args.ignored_xids.split(",") if x.strip()]
    except ValueError:
        print(f"wanka agent: bad --ignored-xids {args.ignored_xids!r}", file=sys.stderr)
        return None
    return NvmlProbe(
        nvml,
        xid_hold_seconds=args.xid_hold_seconds,
        ignored_xids=ignored,
        max_temperature=args.max_temperature,
        expected_nvlinks=args.expected_nvlinks,
    )
