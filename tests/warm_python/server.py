"""The warm interpreter: ``python server.py SOCKET`` imports what recog's commands import, then forks one
child per request (from ``client.py``) that runs ``python SCRIPT ARGS`` as a fresh interpreter would.

A child gets the client's stdin/stdout/stderr, argv, working directory, environment, umask and ignored
signals; ``sys.path[0]`` is the script's folder and ``__main__`` a new module. It ends as an interpreter does
(non-daemon threads joined, ``atexit`` functions run, streams flushed, the exit code of ``SystemExit``, a
traceback and 1 for an uncaught exception, death by SIGINT after ``KeyboardInterrupt``) but without tearing
down the warm modules one by one, which would copy most of the server's memory into the child (1 s). The
server sends the child's wait status to the client.

A request is refused (the client then execs the real interpreter) when its environment differs from this
server's in a variable that may be read at import (anything outside ``MAY_DIFFER``) or its resource limits
differ: the modules imported here would not be the ones a fresh process imports.
"""

import atexit
import ctypes
import gc
import json
import os
import resource
import selectors
import signal
import socket
import sys
import threading
import types

LAUNCH_ENV = dict(os.environ)  # before any import can change it

# Read when used, not at import: may differ between requests. Also set by the tests' own imports:
# MLflow's telemetry session (which session a process reports under, when it reports), and
# KMP_DUPLICATE_LIB_OK, read by Intel's OpenMP only when a second copy loads (which would have
# aborted this server without it); each process that loads it marks itself in __KMP_REGISTERED_LIB_<pid>.
MAY_DIFFER = {
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "PATH",
    "PYTEST_CURRENT_TEST",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
    "MLFLOW_TRACKING_URI",
    "COLUMNS",
    "LINES",
    "_MLFLOW_TELEMETRY_SESSION_ID",
    "KMP_DUPLICATE_LIB_OK",
}
# Read by an import for whether it is set at all: recog keeps a user's OMP_NUM_THREADS as it is.
PRESENCE_READ = {"OMP_NUM_THREADS"}
LIMITS = ("RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_CPU", "RLIMIT_STACK")


def limits() -> list:
    return [list(resource.getrlimit(getattr(resource, name))) for name in LIMITS]


def warm_up() -> None:
    """Imports every module of recog, the libraries its stages use, and Hydra's plugins."""
    import importlib
    import pkgutil

    import recog  # noqa: F401  (sets the thread count and imports Paddle first, as run.py does)

    for info in pkgutil.walk_packages(recog.__path__, "recog."):
        importlib.import_module(info.name)
    import cv2  # noqa: F401
    import joblib  # noqa: F401  (Hydra's joblib launcher)
    import mlflow  # noqa: F401
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from hydra.core.plugins import Plugins

    Plugins.instance()


def python_path(env: dict) -> list:
    return sorted({os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p})


def refusal(request: dict):
    """Why ``request`` must run in a fresh interpreter, or None."""
    env = request["env"]
    for name in sorted(set(env) | set(LAUNCH_ENV)):
        if name in MAY_DIFFER or name == "PYTHONPATH" or name.startswith("__KMP_REGISTERED_LIB_"):
            continue
        if env.get(name) == LAUNCH_ENV.get(name):
            continue
        if name not in PRESENCE_READ and env.get(name) == os.environ.get(name):
            continue  # what the imports here made of it, as the test process's did (GLOG_minloglevel, ...)
        return f"environment variable {name} differs"
    if python_path(env) != python_path(LAUNCH_ENV):
        return "PYTHONPATH differs"
    if request["limits"] != limits():
        return "resource limits differ"
    if not os.path.isfile(os.path.join(request["cwd"], request["argv"][0])):
        return "no such script"
    return None


def receive(conn: socket.socket):
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    return json.loads(data), fds


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:
        pass  # the client is gone


def serve(path: str):
    """Answers requests until stopped; returns ``(request, fds)`` only in a forked child."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # clients see the socket once it answers
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children = {}  # pidfd -> (pid, conn)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = receive(conn)
                    reason = refusal(request)
                except (OSError, ValueError, KeyError, TypeError):  # a client that died or sent nonsense
                    conn.close()
                    continue
                if reason:
                    print(f"warm python: fresh interpreter for {request['argv'][:2]}: {reason}", flush=True)
                    _send(conn, {"exec": reason})
                    conn.close()
                    for fd in fds:
                        os.close(fd)
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for pidfd, (_, other) in children.items():
                        os.close(pidfd)
                        other.close()
                    conn.close()
                    return request, fds
                for fd in fds:
                    os.close(fd)
                _send(conn, {"pid": pid})  # a client gone by now is seen below, as a hang-up
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ)
                selector.register(conn, selectors.EVENT_READ, data=pid)
            elif key.data is not None:  # the client hung up (killed): so is its process
                os.kill(key.data, signal.SIGKILL)
                selector.unregister(key.fileobj)
            else:  # a child ended
                pid, conn = children.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                if conn.fileno() in selector.get_map():
                    selector.unregister(conn)
                _, status = os.waitpid(pid, 0)
                _send(conn, {"status": status})
                conn.close()


def become(request: dict, fds: list) -> None:
    """This forked child takes on the client's process state."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.update(CHANGED_BY_IMPORTS)
    for signum in request["ignored"]:
        signal.signal(signum, signal.SIG_IGN)
    import numpy

    numpy.random.seed()  # a fresh process draws its own seed (Python's random reseeds at fork by itself)


def exit_code(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def finish(code: int, signum: int = 0) -> None:
    """Interpreter shutdown as others see it, then the exit (by ``signum`` when given)."""
    threading._shutdown()  # joins the non-daemon threads, as the interpreter does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    ctypes.CDLL(None).fflush(None)  # C stdio buffers (os._exit skips the C exit)
    if signum:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(code)


def run_script(argv: list) -> None:
    script = os.path.abspath(argv[0])
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    with open(script, "rb") as source:
        code = compile(source.read(), script, "exec")
    exec(code, main.__dict__)


def run_child(request: dict, fds: list) -> None:
    become(request, fds)
    try:
        run_script(request["argv"])
    except SystemExit as stop:
        finish(exit_code(stop))
    except BaseException as error:
        error.__traceback__ = error.__traceback__.tb_next.tb_next  # from the script's frame, as a fresh process
        sys.excepthook(type(error), error, error.__traceback__)
        finish(1, signal.SIGINT if isinstance(error, KeyboardInterrupt) else 0)
    finish(0)


if __name__ == "__main__":
    warm_up()
    CHANGED_BY_IMPORTS = {k: v for k, v in os.environ.items() if LAUNCH_ENV.get(k) != v}  # each child gets them too
    gc.freeze()  # the warm objects stay out of the children's collections: no copy of their pages
    run_child(*serve(sys.argv[1]))
