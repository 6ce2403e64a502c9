"""A small process that starts the benchmarked commands for failover.py.

Why: a child's peak RSS (``ru_maxrss`` from ``wait4``) includes the memory image it was forked
from.  Forked (or vforked) from the harness, which has pyroute2, threads and servers loaded, every
child would report ~40 MB.  Forked from this process (run as ``python -I -S``, standard library
builtins only) the floor is a few MB, below anything measured.

Protocol on stdin/stdout: frames of a 4-byte little-endian length + ``marshal`` data.
Requests (dicts, key "op"):
  run   argv env cwd out err timeout -> {t0, t1, rc, maxrss_kb, timed_out}
  spawn argv env cwd out err         -> {pid, t0}
  reap  pid block                    -> {done, rc, maxrss_kb, t1}
t0/t1 are ``time.perf_counter()`` (CLOCK_MONOTONIC, comparable with the harness's clock).
On EOF or SIGTERM it SIGKILLs the process groups it started, reaps them and exits; it ignores
SIGINT (Ctrl-C reaches the harness, which then closes our stdin).
"""
import marshal
import os
import signal
import sys
import time

live = set()


def read_frame():
    head = b""
    while len(head) < 4:
        chunk = os.read(0, 4 - len(head))
        if not chunk:
            return None
        head += chunk
    n = int.from_bytes(head, "little")
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            return None
        data += chunk
    return marshal.loads(data)


def write_frame(obj):
    data = marshal.dumps(obj)
    os.write(1, len(data).to_bytes(4, "little") + data)


def start(req):
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)   # own process group: a kill on timeout reaches its children too
            fd = os.open(os.devnull, os.O_RDONLY)
            os.dup2(fd, 0)
            fo = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fe = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fo, 1)
            os.dup2(fe, 2)
            os.closerange(3, 65536)
            os.chdir(req["cwd"])
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            os.execvpe(req["argv"][0], req["argv"], req["env"])
        except BaseException as e:  # noqa: BLE001
            os.write(2, f"spawner: exec {req['argv'][0]}: {e}\n".encode())
        os._exit(127)
    live.add(pid)
    return pid, t0


def reap(pid, block):
    got, status, ru = os.wait4(pid, 0 if block else os.WNOHANG)
    t1 = time.perf_counter()
    if got == 0:
        return None
    live.discard(pid)
    return os.waitstatus_to_exitcode(status), ru.ru_maxrss, t1


def kill_all():
    """SIGKILL every started process group (bash and its background jobs too) and reap."""
    for pid in list(live):
        for target in (-pid, pid):
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        live.discard(pid)


def on_term(signum, frame):
    kill_all()
    os._exit(128 + signum)


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C: the harness decides and closes our stdin
    signal.signal(signal.SIGTERM, on_term)
    current = [None]
    fired = [False]

    def on_alarm(signum, frame):
        if current[0] is not None:
            fired[0] = True
            for target in (-current[0], current[0]):
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    signal.signal(signal.SIGALRM, on_alarm)
    while True:
        req = read_frame()
        if req is None:
            break
        op = req["op"]
        try:
            if op == "run":
                pid, t0 = start(req)
                current[0] = pid
                fired[0] = False
                signal.setitimer(signal.ITIMER_REAL, float(req["timeout"]))
                rc, rss, t1 = reap(pid, True)
                signal.setitimer(signal.ITIMER_REAL, 0)
                current[0] = None
                write_frame({"t0": t0, "t1": t1, "rc": rc, "maxrss_kb": rss, "timed_out": fired[0]})
            elif op == "spawn":
                pid, t0 = start(req)
                write_frame({"pid": pid, "t0": t0})
            elif op == "reap":
                r = reap(req["pid"], req["block"])
                write_frame({"done": False} if r is None else
                            {"done": True, "rc": r[0], "maxrss_kb": r[1], "t1": r[2]})
            else:
                write_frame({"error": f"unknown op {op}"})
        except Exception as e:  # noqa: BLE001
            write_frame({"error": f"{type(e).__name__}: {e}"})
    kill_all()
    sys.exit(0)


if __name__ == "__main__":
    main()
