"""MathCoder sandbox runner: a zygote that forks one IPython session per problem.

Started by the Rust supervisor (crate `mathcoder-sandbox`) as

    python -I -u mathcoder_runner.py zygote

with fd 3 = a Unix socket to the supervisor (length-prefixed JSON frames) and fd 4 = the read
end of a "lifeline" pipe whose write end only the supervisor holds: when the supervisor dies
the pipe reads EOF, the zygote exits, and its sessions die with it (PR_SET_PDEATHSIG).

The zygote imports IPython and sympy once, warms sympy and IPython's lazy paths, and keeps a
few sessions forked and prepared, so starting a session is a hand-over. Each session child
prepares itself (working directory, rlimits, Landlock, seccomp) and runs cells through
IPython's own InteractiveShell: the
displayhook, the pretty-printer and the traceback formatter are IPython's, captured the way
ipykernel sends them (stream text, execute_result text/plain, error traceback list). The Rust
side renders the text the model sees. Policy (limits, Landlock paths, seccomp programs) comes
from the supervisor; this file only applies it.
"""

import ctypes
import ctypes.util
import gc
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

CONTROL_FD = 3
LIFELINE_FD = 4


# ---------------------------------------------------------------------------------------------
# Framing: 4-byte little-endian length + UTF-8 JSON.

def send_frame(sock, obj, fds=None):
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    msg = struct.pack("<I", len(data)) + data
    if fds:
        socket.send_fds(sock, [msg], fds)
    else:
        sock.sendall(msg)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock):
    head = recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack("<I", head)
    body = recv_exact(sock, n)
    if body is None:
        return None
    return json.loads(body.decode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------------
# Zygote

def import_and_warm():
    """Imports what sessions use and runs representative work once, so that lazy imports and
    caches are paid for before forking."""
    import fractions, itertools, collections, math, cmath, functools, random, datetime  # noqa: F401
    import resource, tempfile, base64, selectors  # noqa: F401  (used by every session's setup)
    import IPython
    from IPython.core.interactiveshell import InteractiveShell  # noqa: F401
    import stack_data, executing, pygments  # noqa: F401
    from pygments.formatters import Terminal256Formatter  # noqa: F401
    import mpmath  # noqa: F401
    import sympy
    x, y = sympy.symbols("x y")
    sympy.solve(x**2 - 2, x)
    sympy.solve([x + y - 10, x - y - 2], [x, y])
    sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
    sympy.factorint(360)
    sympy.Rational(1, 3) + sympy.sqrt(8)
    sympy.integrate(x**2, x)
    str(sympy.Matrix([[1, 2], [3, 4]]).inv())
    versions = {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "ipython": IPython.__version__,
        "sympy": sympy.__version__,
    }
    # numpy and scipy are not imported here: a fresh kernel does not have them loaded, and they
    # would add 16-40 MB to every fork for modules that almost no cell uses (29 and 3 of 50,820
    # recorded cells). Their versions come from their metadata.
    from importlib.metadata import version

    for name in ("numpy", "scipy"):
        try:
            versions[name] = version(name)
        except Exception:
            pass
    return versions


def murmur2_x86(data, seed):
    """MurmurHash2 (32-bit, x86), the hash ipykernel names cell files with."""
    m = 0x5BD1E995
    length = len(data)
    h = (seed ^ length) & 0xFFFFFFFF
    rounded = length - (length % 4)
    for i in range(0, rounded, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[rounded + 2] << 16
    if rest >= 2:
        h ^= data[rounded + 1] << 8
    if rest >= 1:
        h ^= data[rounded]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def kernel_compiler_class():
    """A CachingCompiler naming cells `/tmp/ipykernel_<pid>/<murmur2>.py` as ipykernel does (the
    name appears in warnings); `Cell In[N]` labels in tracebacks are unaffected."""
    from IPython.core.compilerop import CachingCompiler

    class KernelCompiler(CachingCompiler):
        def get_code_name(self, raw_code, code, number):
            h = murmur2_x86(raw_code.encode("utf-8", "surrogatepass"), 0xC70F6907)
            return "/tmp/ipykernel_%d/%d.py" % (os.getpid(), h)

    return KernelCompiler


def make_shell():
    """One InteractiveShell, configured as ipykernel configures its shell; created in the zygote
    so that every session starts from a copy of it."""
    from traitlets.config import Config
    from IPython.core.interactiveshell import InteractiveShell

    cfg = Config()
    cfg.HistoryManager.enabled = False
    cfg.InteractiveShell.colors = "Linux"
    cfg.InteractiveShell.autocall = 0
    cfg.InteractiveShell.ast_node_interactivity = "last_expr"
    shell = InteractiveShell.instance(config=cfg, compiler_class=kernel_compiler_class())
    return shell


def warm_shell(shell):
    """Runs IPython's lazy paths once (cell transforms, the pretty-printer, runtime and syntax
    tracebacks with stack_data and pygments) without history, so that every session starts with
    them initialised and the user namespace untouched."""
    import sympy

    real_out, real_err = sys.stdout, sys.stderr
    sink = Capture("warm")
    sink.reset(1 << 20)
    sys.stdout = sys.stderr = sink
    try:
        for code in ["pass", "1/0", "undefined_name_", "x = (1,", "from sympy import sqrt\nsqrt(8)"]:
            shell.run_cell(code, store_history=False)
        for obj in [[1, 2], {"a": 1}, {3, 1}, 1.5, sympy.sqrt(2), sympy.Matrix([[1, 2], [3, 4]])]:
            shell.display_formatter.format(obj)
    finally:
        sys.stdout, sys.stderr = real_out, real_err
    for name in ("sqrt",):
        shell.user_ns.pop(name, None)
    for attr in ("last_type", "last_value", "last_traceback"):
        if hasattr(sys, attr):
            delattr(sys, attr)
    RESULTS.clear()


def landlock_abi():
    try:
        v = libc().syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        return max(int(v), 0)
    except Exception:
        return 0


def zygote():
    control = socket.socket(fileno=CONTROL_FD)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        versions = import_and_warm()
        shell = make_shell()
        install_hooks(shell, RESULTS)
        before = set(shell.user_ns)
        warm_shell(shell)
        for name in set(shell.user_ns) - before:
            del shell.user_ns[name]
    except BaseException as e:  # report, then exit
        send_frame(control, {"op": "error", "message": "%s: %s" % (type(e).__name__, e)})
        return 1
    gc.collect()
    gc.freeze()
    try:
        # Return free heap pages to the system: fewer mapped pages, cheaper forks.
        libc().malloc_trim(0)
    except Exception:
        pass
    # SIGCHLD wakes the loop (through a wakeup pipe) so that exits are reported at once.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    send_frame(control, {"op": "ready", "pid": os.getpid(), "versions": versions, "landlock_abi": landlock_abi()})
    config = recv_frame(control)
    if config is None or config.get("op") != "configure":
        return 1
    global SPARES
    SPARES = int(config.get("spares", SPARES))
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ, "control")
    sel.register(LIFELINE_FD, selectors.EVENT_READ, "lifeline")
    sel.register(wake_r, selectors.EVENT_READ, "sigchld")
    spares = []  # (pid, parent socket) of forked, waiting sessions
    while True:
        # Refill one spare at a time, and only when no request is waiting: forking blocks the
        # zygote for a few milliseconds.
        events = sel.select(timeout=0)
        if not events and len(spares) < SPARES:
            spares.append(fork_session(control, shell, config))
            continue
        for key, _ in events or sel.select(timeout=0.5):
            if key.data == "lifeline":
                if not os.read(LIFELINE_FD, 1):
                    os._exit(0)
                continue
            if key.data == "sigchld":
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            req = recv_frame(control)
            if req is None:
                os._exit(0)
            if req.get("op") == "spawn":
                pid, parent_end = spares.pop(0) if spares else fork_session(control, shell, config)
                send_frame(control, {"op": "spawned", "id": req["id"], "pid": pid, "dir": session_dir(config, pid)}, fds=[parent_end.fileno()])
                parent_end.close()
            elif req.get("op") == "shutdown":
                os._exit(0)
        dead = reap(control)
        if dead:
            kept = []
            for pid, end in spares:
                if pid in dead:
                    end.close()
                else:
                    kept.append((pid, end))
            spares = kept


# Sessions kept forked and waiting, so that starting one is a hand-over, not a fork.
SPARES = 2


def reap(control):
    dead = set()
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return dead
        if pid == 0:
            return dead
        dead.add(pid)
        info = {"op": "exited", "pid": pid}
        if os.WIFSIGNALED(status):
            info["signal"] = os.WTERMSIG(status)
        else:
            info["code"] = os.waitstatus_to_exitcode(status)
        try:
            send_frame(control, info)
        except OSError:
            os._exit(0)


def session_dir(config, pid):
    return os.path.join(config["root"], "s%d" % pid)


def fork_session(control, shell, config):
    """Forks a session child that prepares itself completely (working directory, limits,
    Landlock, seccomp) and then waits for cells; returns (pid, the supervisor's end of its
    socket)."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            parent_end.close()
            control.close()
            session_main(child_end, shell, config)
        finally:
            os._exit(0)
    child_end.close()
    return pid, parent_end


# ---------------------------------------------------------------------------------------------
# Session child

class Capture:
    """A text stream that keeps at most `limit` characters and counts the rest."""

    def __init__(self, name):
        self.name = name
        self.parts = []
        self.kept = 0
        self.dropped = 0
        self.limit = 0
        self.active = False
        self.encoding = "utf-8"
        self.errors = "strict"

    def reset(self, limit):
        self.parts = []
        self.kept = 0
        self.dropped = 0
        self.limit = limit
        self.active = True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        if not self.active:
            return len(s)
        room = self.limit - self.kept
        if len(s) <= room:
            self.parts.append(s)
            self.kept += len(s)
        else:
            if room > 0:
                self.parts.append(s[:room])
                self.kept += room
            self.dropped += len(s) - max(room, 0)
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass

    def isatty(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False

    def fileno(self):
        # As ipykernel's streams (and any in-memory stream) do; libraries catch exactly this.
        import io

        raise io.UnsupportedOperation("fileno")

    def value(self):
        return "".join(self.parts)


def limit_text(s, limit):
    if s is None:
        return None, 0
    if len(s) <= limit:
        return s, 0
    return s[:limit], len(s) - limit


def apply_rlimits(limits):
    import resource

    table = {
        "address_space": resource.RLIMIT_AS,
        "cpu_seconds": resource.RLIMIT_CPU,
        "file_size": resource.RLIMIT_FSIZE,
        "open_files": resource.RLIMIT_NOFILE,
        "processes": resource.RLIMIT_NPROC,
        "core": resource.RLIMIT_CORE,
    }
    applied = {}
    for key, res in table.items():
        v = limits.get(key)
        if v is None:
            continue
        try:
            resource.setrlimit(res, (v, v))
            applied[key] = v
        except (ValueError, OSError) as e:
            applied[key] = "failed: %s" % e
    return applied


LL_FS_ALL = [
    1 << 0,   # EXECUTE
    1 << 1,   # WRITE_FILE
    1 << 2,   # READ_FILE
    1 << 3,   # READ_DIR
    1 << 4,   # REMOVE_DIR
    1 << 5,   # REMOVE_FILE
    1 << 6,   # MAKE_CHAR
    1 << 7,   # MAKE_DIR
    1 << 8,   # MAKE_REG
    1 << 9,   # MAKE_SOCK
    1 << 10,  # MAKE_FIFO
    1 << 11,  # MAKE_BLOCK
    1 << 12,  # MAKE_SYM
]
LL_REFER = 1 << 13      # ABI 2
LL_TRUNCATE = 1 << 14   # ABI 3
LL_IOCTL_DEV = 1 << 15  # ABI 5
LL_READ = (1 << 0) | (1 << 2) | (1 << 3)


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_LIBC = []


def libc():
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def apply_landlock(spec):
    """Restricts this process: read (and execute) only `read` paths, read-write only `write`
    paths; TCP bind/connect denied (ABI 4+); signals and abstract sockets scoped (ABI 6+)."""
    libc_ = libc()
    abi = libc_.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return {"landlock": 0}
    fs = 0
    for b in LL_FS_ALL:
        fs |= b
    if abi >= 2:
        fs |= LL_REFER
    if abi >= 3:
        fs |= LL_TRUNCATE
    if abi >= 5:
        fs |= LL_IOCTL_DEV
    attr = RulesetAttr(fs, 0, 0)
    size = 8
    if abi >= 4:
        attr.handled_access_net = 1 | 2  # BIND_TCP | CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = 1 | 2  # ABSTRACT_UNIX_SOCKET | SIGNAL
        size = 24
    fd = libc_.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        return {"landlock": 0, "error": os.strerror(ctypes.get_errno())}
    file_only = (1 << 0) | (1 << 1) | (1 << 2) | LL_TRUNCATE * (abi >= 3) | LL_IOCTL_DEV * (abi >= 5)
    try:
        for path, access in [(p, LL_READ) for p in spec.get("read", [])] + [(p, fs) for p in spec.get("write", [])]:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                allowed = access if os.path.isdir(path) else access & file_only
                rule = PathBeneathAttr(allowed, pfd)
                if libc_.syscall(445, ctypes.c_int(fd), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    return {"landlock": 0, "error": "add_rule %s: %s" % (path, os.strerror(ctypes.get_errno()))}
            finally:
                os.close(pfd)
        if libc_.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return {"landlock": 0, "error": "no_new_privs"}
        if libc_.syscall(446, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            return {"landlock": 0, "error": "restrict_self: %s" % os.strerror(ctypes.get_errno())}
    finally:
        os.close(fd)
    return {"landlock": int(abi)}


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def patch_pid(program_b64, slots, pid):
    """Writes `pid` into the instructions of a seccomp template that compare against it."""
    import base64

    raw = bytearray(base64.b64decode(program_b64))
    size = ctypes.sizeof(SockFilter)
    for i in slots:
        struct.pack_into("=I", raw, i * size + 4, pid)
    return bytes(raw)


def apply_seccomp(programs):
    """Installs seccomp programs (bytes of `struct sock_filter` arrays)."""
    libc_ = libc()
    if libc_.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    for raw in programs:
        n = len(raw) // ctypes.sizeof(SockFilter)
        arr = (SockFilter * n).from_buffer_copy(raw)
        fprog = SockFprog(n, arr)
        # prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog)
        if libc_.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
            return False
    return True


# What the hooks captured for the running cell.
RESULTS = {}


def install_hooks(shell, results):
    """Makes the shell report like ipykernel's: the displayhook keeps text/plain instead of
    printing `Out[N]:`, tracebacks are kept as ipykernel's list of strings, display() output is
    dropped (as MathCoder's collection rule dropped it), and input() raises."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.error import StdinNotImplementedError

    class Hook(DisplayHook):
        def start_displayhook(self):
            pass

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            results["result"] = format_dict.get("text/plain", "")

        def finish_displayhook(self):
            pass

    class Discard(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            pass

        def clear_output(self, wait=False):
            pass

    old = shell.displayhook
    hook = Hook(shell=shell, cache_size=old.cache_size)
    shell.displayhook = hook
    shell.display_trap.hook = hook
    sys.displayhook = hook
    shell.display_pub = Discard(shell=shell)
    # ipykernel's shell asks its frontend to exit through a payload, which MathCoder ignored.
    shell.ask_exit = lambda: None
    # Only text/plain reaches the model; the other formatters' output was discarded anyway.
    shell.display_formatter.active_types = ["text/plain"]

    def _showtraceback(etype, evalue, stb):
        results["error"] = {
            "ename": getattr(etype, "__name__", str(etype)),
            "evalue": str(evalue),
            "traceback": list(stb),
        }

    shell._showtraceback = _showtraceback

    def no_input(prompt=""):
        raise StdinNotImplementedError("raw_input was called, but this frontend does not support input requests.")

    import builtins

    builtins.input = no_input
    shell.user_ns["input"] = no_input


def session_main(sock, shell, config):
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The session socket on a high descriptor, so a cell closing 0-2 cannot break it.
    fd = os.dup2(sock.fileno(), 100) if sock.fileno() != 100 else 100
    os.set_inheritable(fd, False)
    sock.close()
    sock = socket.socket(fileno=fd)
    # fd 0 reads nothing.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    workdir = session_dir(config, os.getpid())
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    os.chdir(workdir)
    # The supervisor's policy names the variables that point at a private directory.
    for k in config.get("private_dir_env", []):
        os.environ[k] = workdir
    import tempfile

    tempfile.tempdir = workdir
    # C-level writes to fds 1 and 2 land in a file read after each cell.
    fd_out_path = os.path.join(workdir, ".mathcoder_fd_output")
    fd_out = os.open(fd_out_path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    os.dup2(fd_out, 1)
    os.dup2(fd_out, 2)
    os.close(fd_out)
    # Fresh randomness per session (forked children would share the zygote's state; numpy is
    # imported, and seeded from the OS, by the session itself).
    import random

    random.seed(os.urandom(32))
    # Die with the zygote (which exits when the supervisor's lifeline closes). The zygote is
    # single-threaded, so the signal is tied to it, not to a thread.
    parent = os.getppid()
    libc().prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)
    os.close(LIFELINE_FD)

    report = {"op": "ready", "pid": os.getpid(), "dir": workdir}
    report["rlimits"] = apply_rlimits(config.get("limits", {}))
    landlock = config.get("landlock")
    if landlock:
        spec = {"read": landlock.get("read", []), "write": [workdir] + landlock.get("write", [])}
        report.update(apply_landlock(spec))
    else:
        report["landlock"] = 0
    programs = config.get("seccomp") or []
    report["seccomp"] = apply_seccomp([patch_pid(p["program"], p["pid_slots"], os.getpid()) for p in programs]) if programs else False
    results = RESULTS
    out = Capture("stdout")
    err = Capture("stderr")
    sys.stdout, sys.stderr = out, err
    baseline_threads = threading.active_count()
    # Buffered in the socket until the supervisor takes this session.
    send_frame(sock, report)
    fd_pos = 0
    while True:
        try:
            req = recv_frame(sock)
        except OSError:
            return
        if req is None:
            return
        if req.get("op") != "exec":
            continue
        limit = int(req.get("max_output", 65536))
        results.clear()
        out.reset(limit)
        err.reset(limit)
        t0 = time.monotonic()
        interrupted = False
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            shell.run_cell(req["code"], store_history=True)
        except KeyboardInterrupt:
            interrupted = True
        except BaseException as e:  # the shell handles user errors; this is our own failure
            results["error"] = {"ename": type(e).__name__, "evalue": str(e), "traceback": [repr(e)]}
        finally:
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            except BaseException:
                pass
        elapsed = time.monotonic() - t0
        out.active = False
        err.active = False
        # C-level output (os.write, C extensions) written to fds 1/2 during the cell.
        fd_text = ""
        try:
            size = os.fstat(1).st_size
            if size > fd_pos:
                with open(fd_out_path, "rb") as f:
                    f.seek(fd_pos)
                    fd_text = f.read(min(size - fd_pos, limit)).decode("utf-8", "replace")
                fd_pos = size
        except OSError:
            pass
        result_text, r_drop = limit_text(results.get("result"), limit)
        error = results.get("error")
        e_drop = 0
        if error is not None:
            tb, kept = [], 0
            for line in error["traceback"]:
                if kept + len(line) > limit:
                    tb.append(line[: max(limit - kept, 0)])
                    e_drop += len(line) - max(limit - kept, 0)
                    kept = limit
                else:
                    tb.append(line)
                    kept += len(line)
            error["traceback"] = tb
        reply = {
            "op": "result",
            "count": shell.execution_count - 1,
            "stdout": out.value() + fd_text,
            "stderr": err.value(),
            "result": result_text,
            "error": error,
            "dropped": out.dropped + err.dropped + r_drop + e_drop,
            "elapsed": elapsed,
            "interrupted": interrupted or (error is not None and error["ename"] == "KeyboardInterrupt"),
            "threads": threading.active_count() - baseline_threads,
        }
        try:
            send_frame(sock, reply)
        except OSError:
            return


def main(argv):
    if len(argv) >= 2 and argv[1] == "zygote":
        return zygote()
    if len(argv) >= 2 and argv[1] == "versions":
        print(json.dumps(import_and_warm()))
        return 0
    sys.stderr.write("usage: mathcoder_runner.py zygote|versions\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
