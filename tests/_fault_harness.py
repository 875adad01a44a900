"""Kill runs at chosen moments: a fork server, phase tracing and deterministic kill schedules.

Starting Python with torch takes seconds on a loaded 2-core machine, so killing 20 runs with a
fresh interpreter each would take minutes. A *zygote* process imports torch and lossatlas once
(and runs nothing) and forks a child per run; each child is a separate process with its own
files and locks, killed with a real SIGKILL. Children of one job are ranks of a real
torch.distributed job (env:// rendezvous, gloo), exactly what torchrun starts, minus its agent;
tests that go through torchrun itself live beside these.

Children trace the phases they reach (``lossatlas._faults``) into a shared file; a test waits for
the k-th occurrence of a phase, sleeps a seeded random delay and kills.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
PHASES_ALL = ("start", "create", "locked", "chunk", "write", "done")
PAUSE = "start=0.03,create=0.03,locked=0.03,write=0.01,done=0.01"
WINDOWS = {"start": 0.03, "create": 0.03, "locked": 0.03, "chunk": 0.02, "write": 0.01, "done": 0.01,
           "digest": 0.01}
PAUSE_DIGEST = PAUSE + ",digest=0.01"  # the kills while checksums are written (tests/test_store_integrity.py)
DELAY = 0.005  # seconds per forward pass of the slow net: a chunk of 4 points takes ~0.02 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(job: dict) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.environ.update(job.get("env", {}))
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 0
    try:
        import _dist_problem

        if job.get("kind") == "legacy":
            import numpy as np

            values = _dist_problem.legacy(job["store"], overwrite=job.get("overwrite", False))
            np.save(job["log"] + ".npy", values)
            Path(job["log"] + ".ok").write_text("{}")
            return
        options = {k: job[k] for k in ("steps", "chunk", "parallel", "batch_size") if k in job}
        ds = _dist_problem.run(job["store"], job.get("delay", 0.0), **options)
        Path(job["log"] + ".ok").write_text(json.dumps({"complete": int(ds.attrs["complete"])}))
    except BaseException as exc:  # noqa: BLE001 - report everything to the log
        import traceback

        traceback.print_exc()
        Path(job["log"] + ".err").write_text(f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def zygote_main() -> None:
    """Import once, then fork one child per JSON line read from stdin; answer each with its pid."""
    import torch

    import lossatlas  # noqa: F401
    import _dist_problem  # noqa: F401

    torch.set_num_threads(1)  # as torchrun does for several processes per node
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(job)
        print(pid, flush=True)


class Zygote:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
            env.pop(key, None)
        self.proc = subprocess.Popen([sys.executable, "-c", "import _fault_harness as h; h.zygote_main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE)
        assert self.proc.stdout.readline().strip() == "ready"

    def spawn(self, job: dict) -> int:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


_shared: Zygote | None = None


def shared_zygote() -> Zygote:
    """One zygote for the whole test session (started on first use, closed at exit)."""
    global _shared
    if _shared is None or _shared.proc.poll() is not None:
        import atexit

        _shared = Zygote()
        atexit.register(_shared.close)
    return _shared


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def kill(pid: int, sig: int = signal.SIGKILL, timeout: float = 20.0) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while alive(pid) and time.time() < deadline:
        time.sleep(0.005)


def wait_dead(pids, timeout: float = 60.0) -> bool:
    deadline = time.time() + timeout
    while any(alive(p) for p in pids):
        if time.time() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_phase(trace: Path, pid: int, phase: str, occurrence: int, timeout: float = 30.0) -> bool:
    """Wait until process ``pid`` has reached ``phase`` ``occurrence`` times (False: it ended or timed out)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if trace.exists():
            n = 0
            for line in trace.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == phase and int(parts[1]) == pid:
                    n += 1
            if n >= occurrence:
                return True
        if not alive(pid):
            return False
        time.sleep(0.001)
    return False


@dataclass
class Moment:
    """Where to kill: the ``occurrence``-th time the victim reaches ``phase``, plus ``delay`` seconds."""

    phase: str
    occurrence: int
    delay: float


def schedule(n: int, seed: int, phases=PHASES_ALL, max_occurrence: int = 3) -> list[Moment]:
    """``n`` kill moments, cycling through ``phases`` (so each is hit), the rest drawn from ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        phase = phases[i % len(phases)]
        repeats = phase in ("chunk", "write", "done")
        occurrence = int(rng.integers(1, max_occurrence + 1)) if repeats else 1
        out.append(Moment(phase, occurrence, float(rng.uniform(0.0, WINDOWS[phase]))))
    return out


def fault_env(trace: Path) -> dict:
    return {"LOSSATLAS_DEBUG_TRACE": str(trace), "LOSSATLAS_DEBUG_PAUSE": PAUSE}


def rank_env(rank: int, world: int, port: int) -> dict:
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
