"""The `wanka agent` subcommand: run the GPU health agent on this node."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from wanka.agent import burnin
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
    _add_probe_flags(parser)
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
    parser.add_argument("--once", action="store_true", help="probe and write once, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be written; touch no API"
    )
    parser.set_defaults(func=run_agent)
    # Optional, so a plain `wanka agent` still runs the agent loop.
    commands = parser.add_subparsers(dest="agent_command", metavar="{burn-in}")
    burn = commands.add_parser(
        "burn-in",
        help="check this node once before it takes work; one JSON verdict, exit 0 only if it passed",
        description=burnin.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_probe_flags(burn)
    burn.add_argument(
        "--expect-devices",
        "--expected-devices",
        dest="expected_devices",
        type=int,
        default=None,
        help="fail unless exactly this many devices are present (default: no check)",
    )
    burn.add_argument(
        "--dcgm-level",
        type=int,
        choices=(1, 2, 3, 4),
        default=1,
        help="`dcgmi diag -r` level, run when dcgmi is on PATH (default 1)",
    )
    burn.add_argument(
        "--result-file",
        default="/dev/termination-log",
        help="where the JSON verdict goes besides stdout (default /dev/termination-log)",
    )
    burn.add_argument(
        "--timeout",
        type=_positive,
        default=600.0,
        help="seconds for the whole run; past it the verdict is Timeout (default 600)",
    )
    burn.set_defaults(func=run_burn_in)


def _add_probe_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe", choices=("nvml", "file"), default="nvml",
                        help="read devices through NVML, or from --fault-file for tests and demos (default nvml)")
    parser.add_argument("--fault-file", help="JSON fault file for --probe file (see docs)")
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


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not > 0")
    return value


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


class ProbeSetupError(Exception):
    """The flags do not make a probe; the message says why."""


def make_probe(args: argparse.Namespace, *, burn_in: bool = False) -> Probe:
    """The probe the flags ask for; with `burn_in`, NVML also gets the burn-in's own checks."""
    if args.probe == "file":
        if not args.fault_file:
            raise ProbeSetupError("--probe file needs --fault-file")
        from wanka.agent.file_probe import FileProbe

        return FileProbe(args.fault_file)
    from wanka.agent.nvml_probe import NvmlProbe, load_nvml

    try:
        nvml = load_nvml()
    except ImportError:
        raise ProbeSetupError("--probe nvml needs nvidia-ml-py (pip install 'wanka[nvml]')") from None
    try:
        ignored = [int(x) for x in args.ignored_xids.split(",") if x.strip()]
    except ValueError:
        raise ProbeSetupError(f"bad --ignored-xids {args.ignored_xids!r}") from None
    probe = NvmlProbe(
        nvml,
        xid_hold_seconds=args.xid_hold_seconds,
        ignored_xids=ignored,
        max_temperature=args.max_temperature,
        expected_nvlinks=args.expected_nvlinks,
    )
    return burnin.NvmlBurnInProbe(probe, nvml) if burn_in else probe


def _build_probe(args: argparse.Namespace) -> Probe | None:
    try:
        return make_probe(args)
    except ProbeSetupError as err:
        print(f"wanka agent: {err}", file=sys.stderr)
        return None


def run_burn_in(args: argparse.Namespace) -> int:
    """Check the node once, write the JSON verdict; 0 only when the node may take work."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        probe = make_probe(args, burn_in=True)
        result = burnin.burn_in(
            probe, expected=args.expected_devices, dcgm_level=args.dcgm_level, timeout=args.timeout
        )
    except ProbeSetupError as err:
        result = burnin.failed(f"cannot probe the devices: {err}")
    except Exception as err:  # the verdict must come out whatever breaks
        log.exception("burn-in failed")
        result = burnin.failed(f"burn-in failed unexpectedly: {type(err).__name__}: {err}")
    burnin.emit(result, args.result_file)
    return 0 if result.ok else 1
