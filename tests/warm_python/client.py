"""``python`` for the test session's commands (written as ``<session>/bin/python`` with this interpreter in
its ``#!`` line, see ``__init__.py``): ``python SCRIPT ARGS`` runs in a child forked from the warm server
(``server.py``), and anything else, or a request the server refuses, in the real interpreter.

To whoever started it this process stands for the child: signals it gets are passed on, and it ends the
way the child ended (its exit code, or the same signal). Runs with ``-S -E``: no site, no environment.
"""

import json
import os
import resource
import signal
import socket
import sys

REAL = sys.executable
SOCKET = os.environ.get("RECOG_TEST_WARM_SOCKET")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# As server.py's LIMITS: this file runs as a standalone shim (-S -E) and cannot import it.
LIMITS = ("RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_CPU", "RLIMIT_STACK")


def fresh() -> None:
    os.execv(REAL, [REAL, *sys.argv[1:]])


def request(conn: socket.socket) -> dict:
    umask = os.umask(0)
    os.umask(umask)
    ignored = [int(s) for s in FORWARDED if signal.getsignal(s) == signal.SIG_IGN]
    return {
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": umask,
        "ignored": ignored,
        "limits": [list(resource.getrlimit(getattr(resource, name))) for name in LIMITS],
    }


def main() -> None:
    args = sys.argv[1:]
    if not SOCKET or not args or args[0].startswith("-") or not args[0].endswith(".py"):
        fresh()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(SOCKET)
        socket.send_fds(conn, [json.dumps(request(conn)).encode()], [0, 1, 2])
        reply = json.loads(conn.recv(1 << 16))
    except (OSError, ValueError):  # no server (yet), or one of fds 0-2 is closed
        fresh()
    if "exec" in reply:
        fresh()
    pid = reply["pid"]
    for signum in FORWARDED:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, lambda received, _frame: os.kill(pid, received))
    answer = conn.recv(1 << 16)
    if not answer:
        sys.stderr.write("warm python: the server ended before the command\n")
        sys.exit(1)
    status = json.loads(answer)["status"]
    if os.WIFSIGNALED(status):
        try:
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL, SIGSTOP: no handler to reset
            pass
        os.kill(os.getpid(), os.WTERMSIG(status))
    sys.exit(os.waitstatus_to_exitcode(status))


main()
