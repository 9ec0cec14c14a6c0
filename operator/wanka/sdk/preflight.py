"""`python -m wanka.sdk.preflight`: check a training gang before it trains (an init container).

Every member runs it with torchrun's environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK):

1. local check: the device works (a matmul with a known answer) and how fast (GFLOP/s);
2. rendezvous through a TCPStore that rank 0 hosts; rank 0 alone says go, or names the
   ranks that did not arrive in time;
3. the matmul timed again (every rank at once), then the collectives: a timed all_reduce
   (bus bandwidth, as nccl-tests defines it) and a ring of point-to-point transfers, each
   link timed alone (its bandwidth);
4. every rank shares its numbers through the store and computes the same verdict with
   `wanka.core.preflight.judge`; every rank exits 1 when the group fails.

Each rank writes one JSON report (`wanka.core.preflight.encode_report`) to
WANKA_PREFLIGHT_RESULT_FILE (default /dev/termination-log) and to stdout; progress goes to
stderr. torch is imported only when the check runs, so the SDK stays importable without it.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from wanka.core.preflight import (
    COLLECTIVE_FAILED,
    LOCAL_CHECK_FAILED,
    MASTER_UNREACHABLE,
    PEERS_MISSING,
    PreflightReport,
    RankSample,
    Thresholds,
    Verdict,
    bus_bandwidth_gbps,
    encode_report,
    judge,
    parse_report,
    peers_missing,
)

log = logging.getLogger("wanka.preflight")

BACKENDS = ("auto", "nccl", "gloo")
DEFAULT_RESULT_FILE = "/dev/termination-log"
PREFIX = "preflight/"
POLL_SECONDS = 0.1
ALLREDUCE_WARMUP, ALLREDUCE_ITERS = 2, 5
LINK_WARMUP, LINK_ITERS = 1, 3


@dataclass(frozen=True, slots=True)
class PreflightConfig:
    """The preflight's settings, from the environment the operator sets."""

    rank: int
    world_size: int
    master_addr: str = "localhost"
    master_port: int = 29500
    backend: str = "auto"  # auto: nccl where CUDA is available, else gloo
    timeout: float = 120.0  # the rendezvous, and each collective
    min_bus_bandwidth_gbps: float = 0.0
    slow_factor: float = 0.5
    size_mb: float | None = None  # None: 64 with nccl, 4 with gloo
    result_file: str = DEFAULT_RESULT_FILE
    local_rank: int = 0  # the CUDA device this rank's collectives use

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PreflightConfig:
        """Raises ValueError naming the variable that is wrong."""
        e = os.environ if env is None else env
        world = _int(e, "WORLD_SIZE", 1)
        rank = _int(e, "RANK", 0)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"RANK={rank} and WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
        backend = e.get("WANKA_PREFLIGHT_BACKEND", "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"WANKA_PREFLIGHT_BACKEND={backend!r}: use one of {', '.join(BACKENDS)}")
        size = e.get("WANKA_PREFLIGHT_SIZE_MB", "").strip()
        config = cls(
            rank=rank,
            world_size=world,
            master_addr=e.get("MASTER_ADDR", "localhost").strip() or "localhost",
            master_port=_int(e, "MASTER_PORT", 29500),
            backend=backend,
            timeout=_float(e, "WANKA_PREFLIGHT_TIMEOUT_SECONDS", 120.0),
            min_bus_bandwidth_gbps=_float(e, "WANKA_PREFLIGHT_MIN_BUSBW_GBPS", 0.0),
            slow_factor=_float(e, "WANKA_PREFLIGHT_SLOW_FACTOR", 0.5),
            size_mb=_float(e, "WANKA_PREFLIGHT_SIZE_MB", 0.0) if size else None,
            result_file=e.get("WANKA_PREFLIGHT_RESULT_FILE", DEFAULT_RESULT_FILE) or DEFAULT_RESULT_FILE,
            local_rank=_int(e, "LOCAL_RANK", 0),
        )
        if not 0 < config.master_port < 65536:
            raise ValueError(f"MASTER_PORT={config.master_port} is not a TCP port")
        if config.timeout <= 0 or (config.size_mb is not None and config.size_mb <= 0):
            raise ValueError("WANKA_PREFLIGHT_TIMEOUT_SECONDS and WANKA_PREFLIGHT_SIZE_MB must be > 0")
        return config

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.slow_factor, self.min_bus_bandwidth_gbps)

    @property
    def endpoint(self) -> str:
        return f"{self.master_addr}:{self.master_port}"

    def size_bytes(self, backend: str) -> int:
        mb = self.size_mb if self.size_mb is not None else (64.0 if backend == "nccl" else 4.0)
        return max(4, int(mb * 2**20) // 4 * 4)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={raw!r} must be a finite number >= 0")
    return value


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def _torch() -> Any:
    # Imported by name so neither the SDK's importers nor mypy load torch unless it is used.
    return importlib.import_module("torch")


def _first_line(err: BaseException) -> str:
    """c10d errors carry a C++ backtrace after the first line; people need the first line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def resolve_backend(requested: str) -> str:
    torch = _torch()
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() and torch.distributed.is_nccl_available() else "gloo"


def local_check(rank: int, backend: str) -> RankSample:
    """Every visible device multiplies with a known answer; throughput is the slowest one's."""
    torch = _torch()
    if backend == "nccl" and (not torch.cuda.is_available() or torch.cuda.device_count() < 1):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        return RankSample(rank, False, f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={visible})")
    rates: list[float] = []
    for device in _devices(torch, backend):
        try:
            rates.append(_matmul_gflops(torch, device))
        except Exception as err:
            return RankSample(rank, False, f"{device}: {_first_line(err)}")
    return RankSample(rank, True, local_gflops=min(rates))


def retime(sample: RankSample, backend: str) -> RankSample:
    """Time the matmuls again once every rank has arrived: all ranks then measure at the same
    moment, none of them held back by a neighbour still starting up on a shared machine.
    Keeps the first figure if this fails; the collectives will tell."""
    torch = _torch()
    try:
        rate = min(_matmul_gflops(torch, d) for d in _devices(torch, backend))
    except Exception as err:
        log.warning("timing the matmul again: %s", _first_line(err))
        return sample
    return replace(sample, local_gflops=rate)


def _devices(torch: Any, backend: str) -> list[Any]:
    if backend == "nccl":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


def _matmul_gflops(torch: Any, device: Any) -> float:
    cuda = device.type == "cuda"
    n = 4096 if cuda else 512
    a = torch.ones((n, n), dtype=torch.float16 if cuda else torch.float32, device=device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    c = a @ a
    sync()
    # ones @ ones is n everywhere, exactly (n is a power of two within float16's range).
    if not bool((c == n).all()):
        raise RuntimeError(f"a {n}x{n} matmul returned wrong values")
    best = math.inf
    for _ in range(8):
        started = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - started)
    return 2.0 * n**3 / max(best, 1e-9) / 1e9


def measure(torch: Any, backend: str, config: PreflightConfig, store: Any, local: RankSample) -> RankSample:
    """Join the process group and time the all_reduce and the ring links; an error lands in
    the sample instead of escaping, so the other ranks still hear from this one."""
    dist = torch.distributed
    n, rank = config.world_size, config.rank
    device = torch.device("cuda", config.local_rank) if backend == "nccl" else torch.device("cpu")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    size = config.size_bytes(backend)
    sample = local
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend,
            store=dist.PrefixStore(PREFIX + "pg/", store),
            rank=rank,
            world_size=n,
            timeout=timedelta(seconds=config.timeout),
        )
    except Exception as err:
        return replace(sample, collective_error=f"init_process_group: {_first_line(err)}")
    try:
        x = torch.ones(size // 4, dtype=torch.float32, device=device)
        dist.all_reduce(x)
        sync()
        if not bool((x == n).all()):
            return replace(sample, collective_error="all_reduce of ones did not sum to the world size")
        for _ in range(ALLREDUCE_WARMUP - 1):
            dist.all_reduce(x)
        barrier = torch.zeros(1, device=device)
        dist.all_reduce(barrier)
        sync()
        started = time.perf_counter()
        for _ in range(ALLREDUCE_ITERS):
            dist.all_reduce(x)
        sync()
        seconds = (time.perf_counter() - started) / ALLREDUCE_ITERS
        sample = replace(sample, bus_bandwidth_gbps=bus_bandwidth_gbps(size, seconds, n))
        sample = replace(sample, in_link_gbps=_ring(torch, dist, device, sync, size, rank, n))
        return sample
    except Exception as err:
        return replace(sample, collective_error=_first_line(err))
    finally:
        try:
            dist.destroy_process_group()
        except Exception as err:
            log.warning("destroy_process_group: %s", _first_line(err))


def ring_phase(rank: int, world_size: int) -> int:
    """Which phase times the link rank -> rank+1: no rank is in two transfers of one phase
    (an edge colouring of the ring), so each link is timed on its own."""
    if world_size % 2 and rank == world_size - 1:
        return 2
    return rank % 2


def _ring(torch: Any, dist: Any, device: Any, sync: Callable[[], None], size: int, rank: int, n: int) -> float | None:
    """The bandwidth of the link from rank-1 into this rank, timed by this (receiving) rank."""
    if n < 2:
        return None
    buf = torch.ones(size // 4, dtype=torch.float32, device=device)
    barrier = torch.zeros(1, device=device)
    prev, nxt = (rank - 1) % n, (rank + 1) % n
    measured: float | None = None
    for phase in range(3 if n % 2 else 2):
        dist.all_reduce(barrier)
        sync()
        sending = ring_phase(rank, n) == phase
        receiving = ring_phase(prev, n) == phase
        elapsed = 0.0
        for i in range(LINK_WARMUP + LINK_ITERS):
            started = time.perf_counter()
            if sending:
                dist.send(buf, nxt)
            if receiving:
                dist.recv(buf, prev)
            sync()
            if i >= LINK_WARMUP:
                elapsed += time.perf_counter() - started
        if receiving:
            measured = size * LINK_ITERS / max(elapsed, 1e-9) / 1e9
    return measured


# ---------------------------------------------------------------------------------------------
# Rendezvous
# ---------------------------------------------------------------------------------------------


class StoreLost(Exception):
    """The rendezvous store (rank 0) stopped answering."""


class Rendezvous:
    """The preflight's protocol over a TCPStore-like object (set/get/add/check)."""

    def __init__(
        self,
        store: Any,
        config: PreflightConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self.arrived = 0  # how many ranks rank 0 saw arrive

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.store, name)(*args)
        except Exception as err:
            raise StoreLost(_first_line(err)) from err

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = self._clock() + timeout
        while not done():
            if self._clock() >= deadline:
                return False
            self._sleep(POLL_SECONDS)
        return True

    def _count(self, key: str) -> int:
        return int(self._call("add", PREFIX + key, 0))

    def arrive(self, local: RankSample) -> Verdict | dict[int, RankSample]:
        """Announce this rank; then rank 0's word: a failed verdict, or every rank's local sample."""
        c = self.config
        n, timeout = c.world_size, c.timeout
        self._call("set", f"{PREFIX}arrived/{c.rank}", local.to_json())
        self._call("add", PREFIX + "arrivals", 1)
        if c.rank == 0:
            self._wait(lambda: self._count("arrivals") >= n, timeout)
            missing = [r for r in range(n) if not self._call("check", [f"{PREFIX}arrived/{r}"])]
            self.arrived = n - len(missing)
            if missing:
                verdict = peers_missing(missing, n, timeout)
                self._call("set", PREFIX + "verdict", encode_report(verdict.report(0, n)))
                return verdict
            self._call("set", PREFIX + "verdict", "go")
        else:
            # Rank 0 decides at its own deadline, which is before this one: it was up first.
            grace = min(10.0, timeout)
            if not self._wait(lambda: bool(self._call("check", [PREFIX + "verdict"])), timeout + grace):
                missing = [r for r in range(n) if not self._call("check", [f"{PREFIX}arrived/{r}"])]
                if missing:
                    return peers_missing(missing, n, timeout)
                why = f"hosts the rendezvous but said nothing within {timeout + grace:g}s"
                return Verdict(False, PEERS_MISSING, {0: why}, message=f"rank 0 {why}")
            word = self._call("get", PREFIX + "verdict").decode()
            if word != "go":
                published = parse_report(word)
                if published is None:
                    return Verdict(False, COLLECTIVE_FAILED, message=f"rank 0 published a bad verdict: {word[:80]!r}")
                return Verdict(published.ok, published.reason, published.culprits,
                               published.bus_bandwidth_gbps, published.message)
        return self._gather("arrived/", [r for r in range(n)])

    def share(self, sample: RankSample) -> dict[int, RankSample]:
        """Publish this rank's measurements; every rank's that came within the timeout."""
        c = self.config
        self._call("set", f"{PREFIX}measured/{c.rank}", sample.to_json())
        self._call("add", PREFIX + "measured", 1)
        self._wait(lambda: self._count("measured") >= c.world_size, c.timeout)
        present = [r for r in range(c.world_size) if self._call("check", [f"{PREFIX}measured/{r}"])]
        return self._gather("measured/", present)

    def _gather(self, prefix: str, ranks: list[int]) -> dict[int, RankSample]:
        keys = [f"{PREFIX}{prefix}{r}" for r in ranks]
        values = self._call("multi_get", keys) if hasattr(self.store, "multi_get") else [
            self._call("get", k) for k in keys
        ]
        return {r: RankSample.from_json(v) for r, v in zip(ranks, values, strict=True)}

    def finish(self, expected: int) -> None:
        """Say this rank has read all it needs; rank 0 keeps the store up until all have."""
        self._call("add", PREFIX + "done", 1)
        if self.config.rank == 0:
            self._wait(lambda: self._count("done") >= expected, min(30.0, self.config.timeout))


def connect(config: PreflightConfig) -> Any:
    """Rank 0 hosts the store and does not wait for the others here; the rest connect,
    retrying for up to the timeout."""
    dist = _torch().distributed
    if config.rank != 0:
        # The store's own connect retries well past its timeout; a plain socket keeps to it.
        _wait_for_port(config.master_addr, config.master_port, config.timeout)
    if config.rank == 0:
        return dist.TCPStore(
            config.master_addr,
            config.master_port,
            config.world_size,
            is_master=True,
            timeout=timedelta(seconds=config.timeout),
            wait_for_workers=False,
        )
    return dist.TCPStore(
        config.master_addr,
        config.master_port,
        is_master=False,
        timeout=timedelta(seconds=config.timeout),
    )


def _wait_for_port(host: str, port: int, timeout: float) -> None:
    """Return once host:port accepts a connection; raise the last error after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, left))):
                return
        except OSError as err:
            if left <= 0:
                raise
            log.debug("rendezvous %s:%d not up yet: %s", host, port, err)
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Preflight:
    """One rank's preflight; `stage` tells a failure which reason it is. `on_stage` gets, at
    each stage, the report to leave behind should the process die in it."""

    def __init__(
        self, config: PreflightConfig, on_stage: Callable[[PreflightReport], None] | None = None
    ) -> None:
        self.config = config
        self.stage = "local check"
        self._on_stage = on_stage

    def _enter(self, stage: str) -> None:
        self.stage = stage
        if self._on_stage is not None:
            self._on_stage(self.failure("the process was killed or crashed before it finished"))

    def run(self) -> PreflightReport:
        c = self.config
        n, rank = c.world_size, c.rank
        self._enter("local check")
        torch = _torch()
        backend = resolve_backend(c.backend)
        log.info("rank %d/%d: local check (%s)", rank, n, backend)
        local = local_check(rank, backend)
        if n == 1:
            return judge({0: local}, 1, c.thresholds).report(rank, n)

        self._enter("rendezvous")
        log.info("rank %d: rendezvous at %s", rank, c.endpoint)
        try:
            store = connect(c)
        except Exception as err:
            if rank == 0:
                why = f"cannot host the rendezvous on port {c.master_port}: {_first_line(err)}"
                return Verdict(False, MASTER_UNREACHABLE, {0: why[:120]}, message=why).report(rank, n)
            return Verdict(
                False,
                MASTER_UNREACHABLE,
                message=f"rank {rank} cannot reach the rendezvous (rank 0) at {c.endpoint} "
                f"within {c.timeout:g}s: {_first_line(err)}",
            ).report(rank, n)
        rendezvous = Rendezvous(store, c)
        try:
            word = rendezvous.arrive(local)
            if isinstance(word, Verdict):
                verdict = word
                expected = rendezvous.arrived
            else:
                expected = n
                if all(s.local_ok for s in word.values()):
                    self._enter("collectives")
                    log.info("rank %d: collectives", rank)
                    sample = measure(torch, backend, c, store, retime(local, backend))
                    self._enter("verdict")
                    log.info("rank %d measured %s", rank, sample.to_json())
                    verdict = judge(rendezvous.share(sample), n, c.thresholds)
                else:
                    verdict = judge(word, n, c.thresholds)
            rendezvous.finish(expected)
        except StoreLost as err:
            return Verdict(
                False,
                MASTER_UNREACHABLE,
                message=f"rank {rank} lost the rendezvous (rank 0) at {c.endpoint} "
                f"during the {self.stage}: {err}",
            ).report(rank, n)
        return verdict.report(rank, n)

    def failure(self, why: str) -> PreflightReport:
        """The report for an unexpected error or a hang in the current stage."""
        c = self.config
        if self.stage == "local check":
            return Verdict(False, LOCAL_CHECK_FAILED, {c.rank: why[:120]},
                           message=f"rank {c.rank} local check: {why}").report(c.rank, c.world_size)
        return Verdict(False, COLLECTIVE_FAILED,
                       message=f"rank {c.rank} during the {self.stage}: {why}").report(c.rank, c.world_size)


class Emitter:
    """Writes the one report, once: the normal path and the watchdog race for it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._done = False

    def provisional(self, report: PreflightReport) -> None:
        """A pessimistic report in the file only, so a hard kill still leaves one."""
        self._write(encode_report(report))

    def emit(self, report: PreflightReport) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = True
            text = encode_report(report)
            self._write(text)
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            return True

    def _write(self, text: str) -> None:
        try:
            Path(self.path).write_text(text, encoding="utf-8")
        except OSError as err:
            print(f"wanka preflight: cannot write {self.path}: {err}", file=sys.stderr)


def main(env: Mapping[str, str] | None = None) -> int:
    """Run the preflight for this rank; 0 only when the whole gang passed."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    e = os.environ if env is None else env
    try:
        config = PreflightConfig.from_env(e)
    except ValueError as err:
        rank = _safe_rank(e)
        report = PreflightReport(
            rank=rank, world_size=max(rank + 1, _safe_world(e)), ok=False, reason=LOCAL_CHECK_FAILED,
            culprits={rank: "bad preflight environment"}, message=f"rank {rank}: {err}",
        )
        Emitter(e.get("WANKA_PREFLIGHT_RESULT_FILE") or DEFAULT_RESULT_FILE).emit(report)
        return 1
    emitter = Emitter(config.result_file)
    preflight = Preflight(config, on_stage=emitter.provisional)

    # Collectives that hang past their own timeout (a wedged NCCL kernel) must not hang the pod;
    # the stages' own timeouts add up to about four timeouts.
    limit = 4 * config.timeout + 60.0

    def give_up() -> None:
        if emitter.emit(preflight.failure(f"no result within {limit:g}s")):
            os._exit(1)

    watchdog = threading.Timer(limit, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        report = preflight.run()
    except Exception as err:
        report = preflight.failure(f"unexpected {_first_line(err)}")
    except KeyboardInterrupt:
        report = preflight.failure("interrupted")
    finally:
        watchdog.cancel()
    emitter.emit(report)
    log.info("rank %d: %s %s", config.rank, report.reason, report.message)
    return 0 if report.ok else 1


def _safe_rank(env: Mapping[str, str]) -> int:
    try:
        return max(0, int(env.get("RANK", "0")))
    except ValueError:
        return 0


def _safe_world(env: Mapping[str, str]) -> int:
    try:
        return max(1, int(env.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


if __name__ == "__main__":
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10d's retry warnings carry backtraces
    sys.exit(main())
