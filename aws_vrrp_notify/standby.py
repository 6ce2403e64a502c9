"""The standby process: the imports of a MASTER transition done before it is needed.

A per-event ``master`` spends most of its time importing botocore (about 90 of 120 ms on
loopback; README, Performance). With ``[aws] standby = true``, ``backup`` and ``fault``
make sure that one standby process runs per state directory: it imports what a transition
needs, then waits on the Unix socket ``standby.sock`` in the state directory. A ``master``
that finds it hands its whole call over: arguments, environment, working directory and its
standard streams (passed as descriptors). The standby forks; the child checks and runs the
transition exactly as the ``master`` process would have (the caller's start time orders
the event, logs go to the caller's stderr and to syslog), and sends back the exit status,
with which the caller exits.

The standby only ever saves time, it is never needed: with no standby, a stale one (the
package or botocore was upgraded since it started), or no answer within HANDOVER_TIMEOUT,
``master`` runs the transition itself. A ``stop`` transition ends the standby.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived transition: annotations only
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

SOCKET_NAME = "standby.sock"
LOCK_NAME = "standby.lock"
CONNECT_TIMEOUT = 0.5
HANDOVER_TIMEOUT = 2.0  # the standby's child acknowledges within milliseconds
IDLE_CHECK = 30.0  # how often an idle standby checks that it is still current
MAX_REQUEST = 1 << 20
ACCEPTED, RUN_IT_YOURSELF, QUIT = b"A", b"S", b"quit"
STREAMS = b"F"  # a child asks for the caller's descriptors with it; they come with it
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SERVER_FDS: List[int] = []  # the standby's listening socket and lock: not for its children


# ---------------------------------------------------------------- the caller (master)


def _usable_socket(root: str) -> Optional[str]:
    """The standby socket's path when the state directory is one we may trust (ours or
    root's, writable by nobody else) and holds a socket of ours; else None."""
    from .trust import ownership_problem

    path = os.path.join(root, SOCKET_NAME)
    try:
        root_st, sock_st = os.lstat(root), os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(root_st.st_mode) or ownership_problem(root_st):
        return None
    if not stat.S_ISSOCK(sock_st.st_mode) or sock_st.st_uid != os.geteuid():
        return None
    return path


def _peer(sock: Any) -> Tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    import socket

    pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid


def _frame(body: bytes) -> bytes:
    """A request as the standby reads it (_receive): its length, then the bytes."""
    return struct.pack(">I", len(body)) + body


def _connect(path: str) -> Optional[Any]:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
        _, uid = _peer(sock)
        if uid != os.geteuid():
            raise OSError(f"the standby socket is served by uid {uid}")
        return sock
    except OSError:
        sock.close()
        return None


def hand_over(argv: List[str], state_dir: Optional[str], verbosity: int = 0) -> Optional[int]:
    """Have the standby process carry out this ``master`` call; its exit status, or None
    when there is no usable standby (the caller then runs the transition itself)."""
    from .state import state_dir as resolve

    path = _usable_socket(resolve(state_dir))
    sock = _connect(path) if path else None
    if sock is None:
        return None
    if sock.fileno() <= 2:  # a standard stream was closed: it would be handed over as this socket
        sock.close()
        return None
    import json
    import socket

    try:
        request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        sock.settimeout(HANDOVER_TIMEOUT)
        sock.sendall(_frame(request))
        # the descriptors only to a child that asks for them: in a standby that never reads
        # them (stopped, stuck), they would keep this process's pipes open after it ends
        if sock.recv(1) != STREAMS:
            sock.close()
            return None
        sock.sendmsg([STREAMS], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", 0, 1, 2))])
        answer = sock.recv(1)
    except TimeoutError:
        sock.close()
        _retire(path, verbosity)  # type: ignore[arg-type]
        return None
    except (OSError, ValueError):  # a closed stream, an unusable descriptor
        sock.close()
        return None
    if answer != ACCEPTED:
        sock.close()
        return None
    sock.settimeout(None)  # the transition keeps to its own deadline
    terminated = _pass_on_sigterm(sock)
    try:
        status = sock.recv(1)
    except OSError:
        status = b""
    if status:
        return status[0]
    if terminated:  # the child was interrupted as this process would have been, and said so
        return 128 + terminated[0]
    from .logsetup import log

    log.setup(0).error("master: the standby process ended without an exit status; "
                       "the transition may be incomplete (see the log lines before this one)")
    return 1


def _retire(path: str, verbosity: int) -> None:
    """A standby that did not answer in time (stopped, stuck) is not asked again: without its
    socket the next masters run at once instead of each waiting HANDOVER_TIMEOUT, the next
    backup or fault starts a new standby once it has ended, and it ends when it notices."""
    from .logsetup import log

    try:
        os.unlink(path)
    except OSError:
        pass
    log.setup(verbosity).warning("master: the standby process did not answer within %gs; running the "
                                 "transition here, and no later master will ask it", HANDOVER_TIMEOUT)


def _pass_on_sigterm(sock: Any) -> List[int]:
    """keepalived SIGTERMs the master process when it stops: a master running the transition
    itself then records it interrupted and stops writing (transition._record_interruption).
    Closing our side of the connection tells the child to do the same (_end_with_the_caller).
    The signals received go to the returned list."""
    import signal
    import socket

    received: List[int] = []

    def pass_on(signum: int, frame: object) -> None:
        received.append(signum)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, pass_on)
    return received


def quit_standby(root: str) -> None:
    """Ask the state directory's standby process, if any, to end (``stop``)."""
    path = _usable_socket(root)
    sock = _connect(path) if path else None
    if sock is None:
        return
    try:
        sock.sendall(_frame(QUIT))
    except OSError:
        pass
    finally:
        sock.close()


# ---------------------------------------------------------------- starting it (backup, fault)


def running(root: str) -> bool:
    """Whether a standby process holds the state directory's standby lock."""
    import fcntl

    try:
        fd = os.open(os.path.join(root, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def start(root: str) -> None:
    """Start the standby process for ``root`` unless one runs; detached, so that keepalived
    does not wait for it, with its standard streams on /dev/null."""
    if running(root):
        return
    from .detach import fork_detached

    root = os.path.abspath(root)  # the standby runs from /
    if not fork_detached():
        return
    try:
        os.chdir("/")
        # -I: no script directory, user site or PYTHON* variables on the standby's path
        os.execv(sys.executable, [sys.executable, "-I", "-m", "aws_vrrp_notify.standby", root])
    finally:
        os._exit(1)


# ---------------------------------------------------------------- the standby process


def code_stamp() -> Tuple[Tuple[int, int], ...]:
    """Identity of the installed code: a standby started before an upgrade is stale."""
    import botocore

    from . import __file__ as ours

    stamps = []
    for path in (ours, botocore.__file__, os.path.dirname(ours)):
        try:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_mtime_ns))
        except OSError:
            stamps.append((0, 0))
    return tuple(stamps)


def preload() -> None:
    """Import what a MASTER transition imports, botocore first."""
    import botocore.auth  # noqa: F401
    import botocore.client  # noqa: F401
    import botocore.credentials  # noqa: F401
    import botocore.endpoint  # noqa: F401
    import botocore.loaders  # noqa: F401
    import botocore.session  # noqa: F401

    from . import botomodel, commands, config, ec2, imds, links, observe, plan, route53, transition  # noqa: F401
    from .actions import ACTION_TYPES  # noqa: F401

    ec2.make_session_ahead()


def _take_lock(root: str) -> Optional[int]:
    import fcntl

    fd = os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _listen(root: str) -> Tuple[Any, int]:
    import socket

    path = os.path.join(root, SOCKET_NAME)
    try:
        os.unlink(path)  # a dead standby's; the lock says no live one uses it
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(16)
    return sock, os.lstat(path).st_ino


def _still_ours(root: str, inode: int) -> bool:
    try:
        return os.lstat(os.path.join(root, SOCKET_NAME)).st_ino == inode
    except OSError:
        return False


def _receive(conn: Any) -> Optional[Dict[str, Any]]:
    """The caller's request."""
    import json

    conn.settimeout(HANDOVER_TIMEOUT)
    data = conn.recv(4 + MAX_REQUEST)
    if len(data) < 4:
        return None
    size = struct.unpack(">I", data[:4])[0]
    body = data[4:]
    while len(body) < size <= MAX_REQUEST:
        more = conn.recv(size - len(body))
        if not more:
            break
        body += more
    if body == QUIT:
        return {"quit": True}
    try:
        request = json.loads(body)
    except ValueError:
        return None
    return request if isinstance(request, dict) else None


def _receive_streams(conn: Any) -> List[int]:
    """The caller's descriptors 0, 1 and 2, asked for with STREAMS."""
    import array
    import socket

    fds = array.array("i")
    conn.sendall(STREAMS)
    data, ancillary, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if data != STREAMS or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("no standard streams from the caller")
    return list(fds)


def _valid_call(request: Optional[Dict[str, Any]]) -> bool:
    if request is None:
        return False
    argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
    return (isinstance(argv, list) and all(isinstance(a, str) for a in argv) and isinstance(cwd, str)
            and isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()))


def _carry_out(conn: Any, request: Dict[str, Any], caller: int) -> None:
    """In the forked child: become the caller's ``master`` process and run it."""
    import signal

    from . import state
    from .__main__ import FastCall, parse_fast
    from .logsetup import log

    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in _SERVER_FDS:
            os.close(fd)
        os.chdir(request["cwd"])
        call = parse_fast(request["argv"])
        if not isinstance(call, FastCall) or call.state != "MASTER":
            raise ValueError("not a master call")
        for target, fd in zip((0, 1, 2), _receive_streams(conn)):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        state.EVENT_PROCESS = str(caller)  # the caller's start time orders this event
        log.reset()
        conn.sendall(ACCEPTED)
        conn.settimeout(None)
    except (OSError, ValueError, KeyError):
        try:
            conn.sendall(RUN_IT_YOURSELF)
        finally:
            os._exit(0)
    try:
        from .commands import transition

        _end_with_the_caller(conn)
        log.setup(call.verbosity).debug("master %s: run by the standby process for pid %d", call.group, caller)
        code = transition(call.config, call.state_dir, call.verbosity, call.state, call.group,
                          call.via_notify, call.cache_dir)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # done: a late end of the caller changes nothing
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(bytes([code & 0xFF]))
        finally:
            os._exit(code)


def _end_with_the_caller(conn: Any) -> None:
    """SIGTERM this child when the caller's side of the connection closes: the caller was
    SIGTERMed (it passes that on, _pass_on_sigterm) or killed. The transition handles the
    signal as the master process would have (transition._record_interruption)."""
    import signal
    import threading

    def watch() -> None:
        try:
            while conn.recv(4096):  # the caller sends nothing more; anything read is ignored
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="caller", daemon=True).start()


def _serve_one(conn: Any, stamp: Tuple[Tuple[int, int], ...]) -> bool:
    """Answer one connection; False when the standby should end."""
    try:
        caller, uid = _peer(conn)
        if uid != os.geteuid():
            return True
        request = _receive(conn)
        if request is not None and request.get("quit"):
            return False
        if code_stamp() != stamp:
            conn.sendall(RUN_IT_YOURSELF)
            return False
        if not _valid_call(request):
            conn.sendall(RUN_IT_YOURSELF)
            return True
        assert request is not None
        if os.fork() == 0:
            _carry_out(conn, request, caller)
    except OSError:
        pass
    finally:
        conn.close()
    return True


def serve(root: str) -> int:
    """The standby process's life: one per state directory, until ``stop``, an upgrade,
    the socket's removal (a new state directory) or SIGTERM."""
    import gc
    import select
    import signal

    gc.disable()
    lock = _take_lock(root)
    if lock is None:
        return 0  # another standby serves this state directory
    preload()
    stamp = code_stamp()
    sock, inode = _listen(root)
    _SERVER_FDS.extend((sock.fileno(), lock))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the children are reaped by the kernel
    gc.freeze()
    from .logsetup import log

    log.setup(0).info("standby process ready for the next master (state directory %s)", root)
    while _still_ours(root, inode) and code_stamp() == stamp:
        readable, _, _ = select.select([sock], [], [], IDLE_CHECK)
        if readable:
            conn, _ = sock.accept()
            if not _serve_one(conn, stamp):
                break
    log.info("standby process for %s ends", root)
    if _still_ours(root, inode):
        os.unlink(os.path.join(root, SOCKET_NAME))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m aws_vrrp_notify.standby STATE_DIR (started by backup and fault)\n")
        sys.exit(2)
    sys.exit(serve(sys.argv[1]))
