"""In-sandbox runner: ``python3 -I -S harness.py <result_fd>`` in the job's temporary directory.

Trusted code that runs *before* the untrusted program, in the same process: it reads ``job.json``
(and deletes it, so the program cannot read the nonce from disk), sets resource limits, closes stdin,
then executes the program and each test, reporting one JSON line per event on ``result_fd`` — a pipe
the host created, separate from the program's stdout/stderr. Every record carries the job's nonce;
the host ignores records without it. ``call``/``stdio`` tests report the *output* only; the host,
not this process, compares it with the expected value. Standalone: imports nothing from ra3.
"""

import _json  # json's C parts: `import json` would pull in `re` and `enum` (~5 ms of a ~25 ms job)
import _signal as signal  # the C module: `signal` imports `enum`
import collections
import io
import math
import os
import resource
import sys
import time

try:
    from _sha256 import sha256 as _sha256  # builtin (3.11); hashlib loads OpenSSL (~2.5 ms)
except ImportError:
    try:
        from _sha2 import sha256 as _sha256  # 3.12+
    except ImportError:
        from hashlib import sha256 as _sha256


class _TestTimeout(BaseException):
    pass


# The builtins the encoder relies on, bound before the program runs (it may patch ``builtins``).
_type, _repr, _sorted, _isfinite, _hex, _str, _bool = type, repr, sorted, math.isfinite, bytes.hex, str, bool
_dict_items = dict.items
_quote, _scanner = _json.encode_basestring_ascii, _json.make_scanner
_STDLIB_DICTS = (collections.OrderedDict, collections.defaultdict, collections.Counter)  # sent as plain dicts


def _dumps(value) -> str:
    """``json.dumps(value, separators=(",", ":"))``, byte for byte, for what ``encode`` and the records hold (dicts
    with str keys, lists, str, int, float, bool, None), bound before the program runs like everything here."""
    t = _type(value)
    if t is str:
        return _quote(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return int.__repr__(value)
    if t is float:
        if _isfinite(value):
            return float.__repr__(value)
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    if t is list or t is tuple:
        return "[" + ",".join([_dumps(v) for v in value]) + "]"
    if t is dict:
        return "{" + ",".join([_quote(k) + ":" + _dumps(v) for k, v in _dict_items(value)]) + "}"
    raise TypeError(f"not JSON data: {t.__name__}")


class _Scan:  # the parse settings json.loads would give its C scanner
    strict, object_hook, object_pairs_hook, parse_float, parse_int = True, None, None, float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__


def _loads(text: str):
    return _scanner(_Scan)(text, 0)[0]


def encode(value, depth=0):
    """Tagged JSON for plain Python data (tuples, sets, complex, non-finite floats survive the trip). Only exact
    builtin types are data (and the stdlib's dict subclasses, sent by their stored items): any other object, a
    subclass of a builtin included, becomes an opaque repr, which the host never counts as equal to anything."""
    if depth > 100:
        return {"t": "repr", "v": "<too deep>"}
    t = _type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -2**53 < value < 2**53 else {"t": "int", "v": int.__repr__(value)}
    if t is float:
        return value if _isfinite(value) else {"t": "float", "v": float.__repr__(value)}
    if t is complex:
        return {"t": "complex", "v": [encode(value.real), encode(value.imag)]}
    if t is list:
        return [encode(v, depth + 1) for v in value]
    if t is tuple:
        return {"t": "tuple", "v": [encode(v, depth + 1) for v in value]}
    if t is set or t is frozenset:
        try:
            items = _sorted(value, key=_repr)
        except BaseException:
            items = [v for v in value]
        return {"t": "frozenset" if t is frozenset else "set", "v": [encode(v, depth + 1) for v in items]}
    if t is dict or t in _STDLIB_DICTS:
        return {"t": "dict", "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in _dict_items(value)]}
    if t is bytes:
        return {"t": "bytes", "v": _hex(value)}
    if t is _Digest:  # on the host: a stored ground truth
        return {"t": "digest", "v": value.hexdigest, "n": value.n}
    try:
        return {"t": "repr", "v": _str(_repr(value))[:10000]}
    except BaseException:
        return {"t": "repr", "v": "<unrepresentable>"}


DIGEST_OVER = 1 << 20  # a call's output whose JSON is longer than this comes back as (sha256, length)


class _Digest:
    """A large output, by the sha256 and length of its encoded JSON: equal to another digest of the same."""

    def __init__(self, hexdigest, n):
        self.hexdigest, self.n = hexdigest, n

    def __eq__(self, other):
        return _type(other) is _Digest and other.hexdigest == self.hexdigest and other.n == self.n

    def __hash__(self):
        return hash(self.hexdigest)

    def __repr__(self):
        return f"<output of {self.n} JSON characters, sha256 {self.hexdigest[:12]}>"


def encode_output(value):
    """``encode`` for a call's output: outputs over ``DIGEST_OVER`` JSON characters are sent as a digest, so a
    huge answer (MBPP+'s combination lists) costs a hash instead of the result channel."""
    encoded = encode(value)
    if _type(encoded) is not list and _type(encoded) is not dict:
        return encoded
    text = _dumps(encoded)
    if len(text) <= DIGEST_OVER:
        return encoded
    return {"t": "digest", "v": _sha256(text.encode()).hexdigest(), "n": len(text)}


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        t, v = value.get("t"), value.get("v")
        if t == "tuple":
            return tuple(decode(x) for x in v)
        if t == "set":
            return {decode(x) for x in v}
        if t == "frozenset":
            return frozenset(decode(x) for x in v)
        if t == "dict":
            return {decode(k): decode(x) for k, x in v}
        if t == "int":
            return int(v)
        if t == "float":
            return float(v)
        if t == "complex":
            return complex(decode(v[0]), decode(v[1]))
        if t == "bytes":
            return bytes.fromhex(v)
        if t == "digest":
            return _Digest(v, value.get("n"))
        return _Opaque(v)
    return value


class _Opaque:
    """A value that was not plain data (a user-defined class, a subclass of a builtin, ...): equal to nothing,
    itself included, so no object the program builds can pass a comparison on the host."""

    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return False

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return self.text


def main():
    if sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3])
        return
    with open("job.json") as f:
        job = _loads(f.read())
    os.remove("job.json")
    run_job(job, int(sys.argv[1]))


def serve(sock_fd, job_root):
    """A warm interpreter that runs jobs in forked children: ``--serve <sock_fd> <job_root>``.

    Per job the host sends one JSON line ``{"wall": s, "uid": int | None, "kill_all": bool, "clear": [folder, ...]}``
    on the socket with four descriptors: the job (a memfd holding ``job.json``'s text), the program's stdout, its
    stderr and the result pipe. The child starts its own session in a fresh directory under ``job_root``, drops to
    ``uid`` (the server runs as root then: the program can neither signal nor trace it), and runs ``run_job``; the
    server waits ``wall`` seconds at most, kills it, with ``kill_all`` every other process in this PID namespace
    too, deletes the directory and empties the ``clear`` folders (but the job root and the harness), and answers
    ``{"status": exit status (-signal), "timed_out": bool}``. A child is a fork of this process, which never ran a
    program: every job starts from the same clean state."""
    import select
    import shutil
    import socket

    sock = socket.socket(fileno=sock_fd)
    _set_dumpable(0)  # no process of the programs' uid may trace this one or read its memory (non-root bwrap)
    os.makedirs(job_root, mode=0o711, exist_ok=True)
    keep = {os.path.abspath(job_root), os.path.dirname(os.path.abspath(__file__))}
    n = 0
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 12, 4)
        except OSError:
            return
        if not msg:  # the host closed the channel
            return
        head = _loads(msg.decode())
        n += 1
        work = f"{job_root}/job{n}"
        os.mkdir(work, 0o700)
        uid = head["uid"]
        if uid is not None:
            os.chown(work, uid, uid)
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                _job_child(fds, work, uid)
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
            timed_out = not select.select([pidfd], [], [], head["wall"])[0]
            os.close(pidfd)
        except (AttributeError, OSError):  # no pidfd (Linux < 5.3): poll
            deadline = time.monotonic() + head["wall"]
            while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None and time.monotonic() < deadline:
                time.sleep(0.002)
            timed_out = time.monotonic() >= deadline
        if timed_out:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if head["kill_all"]:
            _kill_namespace()
        _rmtree(shutil, work)
        for folder in head["clear"]:  # what the program wrote in the namespace's other scratch folders
            for entry in os.listdir(folder) if os.path.isdir(folder) else ():
                path = os.path.join(folder, entry)
                if path in keep:
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    _rmtree(shutil, path)
                else:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        sock.sendall((_dumps({"status": status, "timed_out": timed_out}) + "\n").encode())


def _job_child(fds, work, uid):
    payload, out, err, result = fds
    os.setsid()
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    os.chdir(work)
    os.environ["HOME"] = work
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _set_dumpable(1)  # as after exec: the program's /proc/self is its own
    with os.fdopen(payload, "rb") as f:
        job = _loads(f.read().decode())
    run_job(job, result)
    sys.stdout.flush()


_prctl = []  # libc's prctl, looked up once by the server (its forks inherit it), or [None] where there is none


def _set_dumpable(flag):
    if not _prctl:
        try:
            import ctypes

            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError):
            _prctl.append(None)
    if _prctl[0] is not None:
        _prctl[0](4, flag, 0, 0, 0)  # PR_SET_DUMPABLE


def _kill_namespace():
    """Kill every process of this PID namespace but its init and this server, and wait until they are gone
    (a zombie still counts against the uid's process limit). Refused outside a fresh PID namespace (where this
    server is pid 1 or 2): there ``kill(-1)`` would reach every process of the machine that this uid may signal."""
    me = os.getpid()
    if me > 2:
        raise RuntimeError(f"kill_all outside a fresh PID namespace (pid {me})")
    for _ in range(1500):
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]:
            return
        time.sleep(0.002)


def _rmtree(shutil, path):
    hook = "onexc" if sys.version_info >= (3, 12) else "onerror"  # onerror: deprecated since 3.12
    shutil.rmtree(path, **{hook: _force_remove})


def _force_remove(function, path, excinfo):
    """``rmtree``'s error hook: a directory the program made unwritable is made writable again."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        function(path)
    except OSError:
        pass


def run_job(job, result_fd):
    """Run ``job`` (``job.json``'s content) in this process, reporting on ``result_fd``."""
    nonce = job.pop("nonce")
    out = os.fdopen(result_fd, "w", buffering=1)

    def report(**record):
        record["nonce"] = nonce
        try:
            out.write(_dumps(record) + "\n")
        except (TypeError, ValueError, RecursionError):
            record["output"] = {"t": "repr", "v": "<unencodable>"}
            out.write(_dumps(record) + "\n")

    limits = job["limits"]
    mem = limits["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))
    if limits.get("nproc") is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)

    def on_alarm(signum, frame):
        raise _TestTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    sys.argv = ["main.py"]  # as under `python main.py`, whichever way this process started
    program, tests, timeouts = job["program"], job["tests"], job["timeouts"]
    try:
        code = compile(program, "<program>", "exec")
    except (SyntaxError, ValueError, MemoryError) as e:
        report(event="syntax_error", detail=f"{type(e).__name__}: {e}")
        return
    report(event="compiled")

    namespace = {"__name__": "__program__"}
    has_stdio = any(t["kind"] == "stdio" for t in tests)
    if not has_stdio:  # stdio programs run once per test instead
        try:
            signal.setitimer(signal.ITIMER_REAL, max(timeouts) if timeouts else 3.0)
            exec(code, namespace)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _TestTimeout:
            report(event="program", status="timeout", detail="timed out while defining the program")
            return
        except MemoryError:
            report(event="program", status="memory", detail="MemoryError while defining the program")
            return
        except BaseException as e:  # SystemExit included: exiting early is not passing
            signal.setitimer(signal.ITIMER_REAL, 0)
            report(event="program", status="error", detail=f"{type(e).__name__}: {e}"[:500])
            return
    entry_name = job.get("entry_point") or ""
    try:  # "Solution.method" (LeetCode style) calls the method on a fresh instance
        cls_name, _, method = entry_name.partition(".")
        entry = getattr(namespace[cls_name](), method) if method else namespace.get(entry_name)
    except BaseException:
        entry = None

    for i, test in enumerate(tests):
        record = {"event": "test", "i": i}
        start = time.perf_counter()
        captured = None
        try:
            signal.setitimer(signal.ITIMER_REAL, timeouts[i])
            if test["kind"] == "assert":
                exec(test["code"], namespace)
            elif test["kind"] == "call":
                if not callable(entry):
                    raise NameError(f"entry point {job.get('entry_point')!r} is not defined")
                value = entry(*decode(test["args"]))
                record["output"] = encode_output(value)
                try:  # for `assert f(x)` / `assert not f(x)`: the assert's own test, whatever f returns
                    record["truth"] = _bool(value) is True
                except BaseException:
                    record["truth"] = None
            elif test["kind"] == "stdio":
                captured = io.StringIO()
                sys.stdin, sys.stdout = io.StringIO(test["stdin"]), captured
                exec(code, {"__name__": "__main__"})
            signal.setitimer(signal.ITIMER_REAL, 0)
            record["status"] = "passed"
        except _TestTimeout:
            record["status"] = "timeout"
        except AssertionError as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            record.update(status="failed", detail=f"AssertionError: {e}"[:500])
        except MemoryError:
            signal.setitimer(signal.ITIMER_REAL, 0)
            record.update(status="memory", detail="MemoryError")
        except SystemExit as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if test["kind"] == "stdio" and e.code in (None, 0):
                record["status"] = "passed"  # a stdin/stdout program may end with exit()
            else:
                record.update(status="error", detail=f"SystemExit({e.code!r}) during a test")
        except BaseException as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            record.update(status="error", detail=f"{type(e).__name__}: {e}"[:500])
        finally:
            if captured is not None:
                sys.stdin, sys.stdout = sys.__stdin__, sys.__stdout__
        if captured is not None and record["status"] == "passed":
            record["output"] = captured.getvalue()[: 1 << 20]
        record["time"] = time.perf_counter() - start
        report(**record)
        if record["status"] == "timeout" or (job.get("stop_on_failure") and record["status"] != "passed"):
            break
    report(event="done")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # do not run the program's atexit handlers or finalizers after the verdict
