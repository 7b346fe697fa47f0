"""Hostile programs against the real subprocess sandbox, on every available backend."""

import os
import shutil
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from ra3.execution import Job, LocalSandbox, SandboxPool, Status, TestCase

NO_BWRAP = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
NO_SERVER = pytest.mark.skipif(os.geteuid() != 0, reason="a fork server without bwrap needs root")
BACKENDS = [  # (isolation, fork_server): jobs forked from a warm harness server, or a fresh interpreter each
    pytest.param(("bwrap", True), marks=NO_BWRAP, id="bwrap-fork_server"),
    pytest.param(("bwrap", False), marks=NO_BWRAP, id="bwrap-spawn"),
    pytest.param(("none", True), marks=NO_SERVER, id="none-fork_server"),
    pytest.param(("none", False), id="none-spawn"),
]
PROBE_DIR = Path(__file__).resolve().parent  # outside /tmp: a write here would touch the host


def job(program, tests=("assert True",), timeout=2.0, **kw):
    return Job(program, [TestCase("assert", code=t) for t in tests], timeout=timeout, **kw)


@pytest.fixture(params=BACKENDS, scope="module")
def pool(request):
    isolation, fork_server = request.param
    with SandboxPool(LocalSandbox(isolation=isolation, fork_server=fork_server), workers=2) as p:
        yield p


def _no_process_with_arg(arg: str) -> bool:
    for p in psutil.process_iter(["cmdline"]):
        if arg in (p.info["cmdline"] or []):
            return False
    return True


def run_one(pool, j):
    result = pool.run_many([j])[0]
    healthy = pool.run_many([job("def f(): return 1", ["assert f() == 1"])])[0]
    assert healthy.status == Status.PASSED, "the pool must keep serving after a hostile job"
    return result


def test_correct_program_passes_and_wrong_program_fails(pool):
    ok, wrong = pool.run_many([
        Job("def f(x):\n    return x + 1", [TestCase("assert", code="assert f(1) == 2"), TestCase("call", args=[3], expected=4)], entry_point="f"),
        Job("def f(x):\n    return x", [TestCase("call", args=[3], expected=4)], entry_point="f"),
    ])
    assert ok.status == Status.PASSED and ok.test_statuses == [Status.PASSED, Status.PASSED] and ok.outputs[1] == 4
    assert wrong.status == Status.FAILED and wrong.outputs == [3]


def test_infinite_loop_times_out(pool):
    t = time.perf_counter()
    r = run_one(pool, job("def f():\n    while True: pass", ["f()"], timeout=1.0))
    assert r.status == Status.TIMEOUT and time.perf_counter() - t < 6


def test_ignoring_sigalrm_does_not_escape_the_wall_clock(pool):
    t = time.perf_counter()
    r = run_one(pool, job("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass", timeout=1.0))
    assert r.status == Status.TIMEOUT and time.perf_counter() - t < 6


def test_fork_bomb_is_contained(pool):
    r = run_one(pool, job("import os\nwhile True:\n    os.fork()", timeout=2.0))
    assert r.status in (Status.ERROR, Status.TIMEOUT, Status.KILLED)
    time.sleep(0.2)
    harness = [p for p in psutil.process_iter(["cmdline", "name"])
               if "harness.py" in " ".join(p.info["cmdline"] or []) and p.info["name"] != "bwrap"]
    assert len(harness) == len(pool.sandbox._servers)  # the idle servers only (a fork shows its server's command line)
    from ra3.execution.sandbox import MAX_SLOTS, UID_BASE
    running = [p for p in psutil.process_iter(["uids", "status"])
               if UID_BASE <= p.info["uids"].real < UID_BASE + MAX_SLOTS and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not running  # killed children may linger as zombies until init reaps them; none may still run


def test_allocating_10_gib_is_a_memory_error(pool):
    r = run_one(pool, job("x = bytearray(10 * 1024 ** 3)"))
    assert r.status == Status.MEMORY


def test_printing_100_mb_is_capped(pool):
    r = run_one(pool, job("import sys\nsys.stdout.write('x' * 100_000_000)\ndef f(): return 2", ["assert f() == 2"]))
    assert r.status == Status.PASSED
    assert len(r.stdout) == pool.sandbox.max_output_bytes


def test_files_outside_the_temp_dir_are_untouched(pool, tmp_path):
    victim = PROBE_DIR / f".victim-{os.getpid()}"
    victim.write_text("keep me")
    created = PROBE_DIR / f".created-{os.getpid()}"
    try:
        r = run_one(pool, job(f"import os\nopen({str(created)!r}, 'w').write('x')\nos.remove({str(victim)!r})"))
        assert r.status == Status.ERROR
        assert victim.read_text() == "keep me" and not created.exists()
        inside = run_one(pool, job("open('scratch.txt', 'w').write('ok')\nimport os\nos.remove('scratch.txt')"))
        assert inside.status == Status.PASSED  # its own temp dir is writable
    finally:
        victim.unlink(missing_ok=True)
        created.unlink(missing_ok=True)


def test_no_network_even_to_a_local_listener(pool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')"
    r = run_one(pool, job(program))
    thread.join()
    server.close()
    if "network isolation" in pool.sandbox.missing_protections:
        pytest.skip("this backend has no network isolation here (and says so)")
    assert r.status == Status.ERROR and not accepted


def test_environment_secrets_are_not_visible(pool, monkeypatch):
    monkeypatch.setenv("RA3_TEST_SECRET", "s3cr3t-value")
    program = (
        "import os, glob\n"
        "found = os.environ.get('RA3_TEST_SECRET') == 's3cr3t-value'\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        found = found or b's3cr3t-value' in open(path, 'rb').read()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = run_one(pool, job(program, ["assert found"]))
    assert r.status == Status.FAILED
    assert os.environ["RA3_TEST_SECRET"] == "s3cr3t-value"


def test_killing_the_parent_does_not_reach_the_host(pool):
    r = run_one(pool, job("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", ["assert True"]))
    if pool.sandbox.name != "bwrap":  # in bwrap's PID namespace the 'parent' is the sandbox's own init
        assert r.status == Status.ERROR  # a different uid may not signal the host
    assert psutil.Process(os.getpid()).is_running()


def test_a_setsid_child_is_killed(pool):
    marker = f"{300 + os.getpid() % 97}.25"
    program = (
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    os.execv('/bin/sleep', ['sleep', {marker!r}])\n"
        "import time\ntime.sleep(0.2)\n"
    )
    r = run_one(pool, job(program))
    assert r.status == Status.PASSED
    time.sleep(0.3)
    assert _no_process_with_arg(marker)


def test_subclasses_escape_gains_nothing(pool):
    target = PROBE_DIR / f".pwned-{os.getpid()}"
    program = (
        "wc = [c for c in ().__class__.__bases__[0].__subclasses__() if c.__name__ == '_wrap_close'][0]\n"
        "system = wc.__init__.__globals__['system']\n"
        f"rc = system('touch {target}')\n"
    )
    r = run_one(pool, job(program, ["assert rc == 0"]))
    assert r.status == Status.FAILED and not target.exists()


def test_syntax_error(pool):
    assert run_one(pool, job("def f(:\n  pass")).status == Status.SYNTAX_ERROR


def test_exit_before_the_asserts_is_not_a_pass(pool):
    for program in ("exit(0)", "import sys\nsys.exit(0)", "import os\nos._exit(0)"):
        r = run_one(pool, job(program + "\ndef f(): return 1", ["assert f() == 2"]))
        assert r.status == Status.ERROR, program


def test_printing_a_fake_pass_marker_is_not_a_pass(pool):
    program = "print('ALL TESTS PASSED')\nprint('{\"event\": \"done\"}')\ndef f(): return 0"
    r = run_one(pool, job(program, ["assert f() == 1"]))
    assert r.status == Status.FAILED


def test_forged_result_records_without_the_nonce_are_ignored(pool):
    program = (
        "import os, json\n"
        "for fd in range(3, 20):\n"
        "    try:\n"
        "        os.write(fd, (json.dumps({'event': 'done'}) + '\\n').encode())\n"
        "        os.write(fd, (json.dumps({'event': 'test', 'i': 0, 'status': 'passed'}) + '\\n').encode())\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    )
    assert run_one(pool, job(program, ["assert False"])).status == Status.ERROR


def test_stdio_tests_compare_printed_output_outside(pool):
    program = "a, b = map(int, input().split())\nprint(a + b)"
    j = Job(program, [TestCase("stdio", stdin="1 2\n", expected="3\n"), TestCase("stdio", stdin="2 2\n", expected="5")])
    r = pool.run_many([j])[0]
    assert r.test_statuses == [Status.PASSED, Status.FAILED] and r.status == Status.FAILED


def test_programs_see_the_argv_of_python_main_py(pool):
    """Not the harness's own arguments (they differ between a spawned job and a forked one): a program that reads
    its input from ``sys.argv[1]`` when given one (a local-testing idiom) must read stdin here."""
    stdio = Job("import sys\nsrc = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin\nprint(src.read().strip(), sys.argv)",
                [TestCase("stdio", stdin="7\n", expected="7 ['main.py']\n")])
    call = job("import sys\nARGV = list(sys.argv)", ["assert ARGV == ['main.py'], ARGV"])
    assert [r.status for r in pool.run_many([stdio, call])] == [Status.PASSED, Status.PASSED]


def test_no_temp_dirs_are_left_behind(pool):
    import tempfile
    before = set(Path(tempfile.gettempdir()).glob("ra3-job-*"))
    pool.run_many([job(f"x = {i}") for i in range(4)])
    assert set(Path(tempfile.gettempdir()).glob("ra3-job-*")) <= before


class _FailsFirst(LocalSandbox):
    """A real sandbox whose first run of each job fails before the harness starts (as under heavy load)."""

    def __init__(self, failures: int, **kw):
        super().__init__(**kw)
        self.failures, self.calls = failures, {}

    def _run(self, job, slot, start):
        self.calls[job.job_id] = self.calls.get(job.job_id, 0) + 1
        if self.calls[job.job_id] <= self.failures:
            raise OSError("harness could not start")
        return super()._run(job, slot, start)


class _Counting(LocalSandbox):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.programs = []

    def _run(self, job, slot, start):
        self.programs.append(job.program)
        return super()._run(job, slot, start)


def test_identical_jobs_run_once_and_each_keeps_its_id():
    """Jobs equal in all but ``job_id`` (a group's identical samples) run once; every copy gets the result under
    its own id, in input order."""
    sandbox = _Counting(isolation="none")
    right, wrong = job("def f(): return 1", ["assert f() == 1"]), job("def f(): return 2", ["assert f() == 1"])
    jobs = [right, wrong, *[replace(right, job_id=f"copy{i}") for i in range(3)]]
    seen = []
    with SandboxPool(sandbox, workers=2) as pool:
        results = pool.run_many(jobs, on_result=lambda i, r: seen.append((i, r.job_id)))
    assert sorted(sandbox.programs) == sorted([right.program, wrong.program])
    assert [r.status for r in results] == [Status.PASSED, Status.FAILED] + [Status.PASSED] * 3
    assert seen == [(0, ""), (1, ""), (2, "copy0"), (3, "copy1"), (4, "copy2")]


@pytest.mark.parametrize("failures,retries,expected", [(1, 1, Status.PASSED), (2, 1, Status.SANDBOX_ERROR),
                                                       (1, 0, Status.SANDBOX_ERROR)])
def test_sandbox_errors_are_retried(failures, retries, expected):
    sandbox = _FailsFirst(failures, isolation="none")
    with SandboxPool(sandbox, workers=2, retries=retries) as pool:
        results = pool.run_many([job(f"def f(): return {i}", [f"assert f() == {i}"], job_id=f"j{i}") for i in range(3)])
    assert [r.status for r in results] == [expected] * 3
    assert all(n == min(failures, retries) + 1 for n in sandbox.calls.values())


def test_huge_outputs_come_back_as_digests_and_compare_exactly(pool):
    """Outputs over 1 MB of JSON travel as (sha256, length): the same big answer passes, another one fails
    (Mbpp/255's tens of MB of combinations overflowed the 64 MB result channel before)."""
    from ra3.execution.harness import _Digest

    program = "def f(n, k):\n    return [(i, i * k) for i in range(n)]\n"
    tests = [TestCase("call", args=[100_000, k], expected=None, has_expected=False) for k in range(3)]
    truth = run_one(pool, Job(program, tests, entry_point="f", timeout=20.0))
    assert truth.passed and all(isinstance(o, _Digest) for o in truth.outputs)
    for t, out in zip(tests, truth.outputs):
        t.expected, t.has_expected = out, True
    same = run_one(pool, Job(program, tests, entry_point="f", timeout=20.0))
    other = run_one(pool, Job(program.replace("i * k", "i * k + (i == 7)"), tests, entry_point="f", timeout=20.0))
    assert same.passed and not other.passed


def test_concurrent_pools_never_share_a_slot_or_kill_each_others_jobs():
    """Two pools at once (as parallel ``ra3 evaluate`` processes of a study): disjoint slots (uids), and one pool's
    kill sweeps after its jobs never hit the other's running job (before slots were leased, both used uid 61000
    and the long job died with exit 137: a sandbox_error)."""
    with SandboxPool(workers=1) as a, SandboxPool(workers=2) as b:
        assert not set(a._leases) & set(b._leases)
        slow = a.submit(job("import time\ntime.sleep(1.5)\ndef f(x):\n    return x", tests=["assert f(1) == 1"], timeout=10))
        quick = b.run_many([job(f"def f(x):\n    return x + {i}", tests=[f"assert f(1) == {i + 1}"]) for i in range(8)])
        assert all(r.status == Status.PASSED for r in quick)
        assert slow.result().status == Status.PASSED
        with SandboxPool(workers=1) as c:
            assert not set(c._leases) & (set(a._leases) | set(b._leases))
    assert a._leases == {} and b._leases == {}  # locks released


@pytest.mark.parametrize("backend", BACKENDS)
def test_jobs_on_one_slot_see_nothing_of_each_other(backend):
    """One slot runs job after job (from one warm server, or fresh interpreters): files a job wrote in its
    directory, in the namespace's /tmp and /dev/shm (bwrap), and its changes to the interpreter are gone for the next."""
    isolation, fork_server = backend
    scratch = ["/tmp/ra3-left", "/dev/shm/ra3-left"] if isolation == "bwrap" else []
    writer = "import builtins, os\nbuiltins.LEFT = 1\nos.environ['LEFT'] = '1'\nopen('left', 'w').write('x')\n" + "".join(
        f"try:\n    open({p!r}, 'w').write('x')\nexcept OSError:\n    pass\n" for p in scratch)
    reader = job("import builtins, os\nseen = [p for p in ['left', *%r] if os.path.exists(p)]" % scratch,
                 ["assert not hasattr(builtins, 'LEFT')", "assert 'LEFT' not in os.environ", "assert seen == []"])
    with SandboxPool(LocalSandbox(isolation=isolation, fork_server=fork_server), workers=1) as pool:
        first, second = pool.run_many([job(writer), reader])
    assert first.status == Status.PASSED
    assert second.status == Status.PASSED, second.detail


@pytest.mark.skipif(os.geteuid() != 0 and shutil.which("bwrap") is None, reason="a fork server needs root or bwrap")
def test_a_dead_fork_server_is_replaced():
    with SandboxPool(LocalSandbox(fork_server=True), workers=1) as pool:
        assert pool.run_many([job("x = 1")])[0].status == Status.PASSED
        (server,) = pool.sandbox._servers.values()
        os.killpg(server.proc.pid, 9)
        server.proc.wait()
        assert [r.status for r in pool.run_many([job("x = 1") for _ in range(3)])] == [Status.PASSED] * 3
        assert pool.sandbox._servers and server not in pool.sandbox._servers.values()
    assert not server.folder.exists()


def test_pools_stop_their_fork_servers():
    with SandboxPool(workers=2) as pool:
        pool.run_many([job(f"x = {i}") for i in range(4)])
        servers = list(getattr(pool.sandbox, "_servers", {}).values())
    assert all(s.proc.poll() is not None and not s.folder.exists() for s in servers)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0][1]])
def test_a_program_cannot_read_its_servers_memory(backend):
    """A program cannot open its fork server's memory (as root: another uid; under a non-root bwrap, where both share
    a uid, the server is not dumpable)."""
    isolation, fork_server = backend
    program = ("import os\ntry:\n    open(f'/proc/{os.getppid()}/mem', 'rb').read(1)\n    server_readable = True\n"
               "except OSError:\n    server_readable = False\n")
    with SandboxPool(LocalSandbox(isolation=isolation, fork_server=fork_server), workers=1) as pool:
        r = pool.run_many([job(program, ["assert not server_readable"])])[0]
    assert r.status == Status.PASSED, r.detail
