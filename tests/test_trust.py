"""Other local users get nothing: squatted names, loose modes, unsafe runtime folders, job names as code,
and `shmpool cleanup` leaves their instances alone.

"Another user" is uid 65534 (nobody): objects are created by a shell that dropped to that uid
(the interpreter itself lives where nobody cannot read it), or created by us and then handed
over with chown, as a squatter who ran a real instance would leave them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import posix_ipc
import pytest

import _jobs
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.coordinator.cli import build_parser
from shmpool import InvalidJob, UnknownJob, UnsafeRuntimeDir, UntrustedObject
from shmpool.substrate.names import SHM_DIR, list_objects, runtime_dir, segment_name, semaphore_name
from shmpool.substrate.trust import sem_path, shm_path
from shmpool.workers.jobs import JobPolicy

TESTS = Path(__file__).parent
NOBODY = 65534
SEM_T_SIZE = 32  # sizeof(sem_t) on 64-bit Linux: a zeroed file of this size is a valid semaphore

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="simulating another user needs root (setuid, chown)")


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    os.umask(0)


def _create_as_nobody(paths: list[Path], size: int) -> None:
    """Create ``paths`` in /dev/shm from a process running as nobody, mode 0666."""
    subprocess.run(["/bin/sh", "-c", f'for p; do head -c {size} /dev/zero > "$p"; done', "sh", *map(str, paths)],
                   preexec_fn=_drop_to_nobody, cwd="/", check=True, timeout=10)
    for p in paths:
        st = os.stat(p)
        assert st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == 0o666


@pytest.fixture
def squat(request):
    """squat(segments=[...], semaphores=[...]) as nobody; removed after the test (we are root)."""
    made: list[Path] = []

    def make(segments=(), semaphores=()) -> list[Path]:
        segs = [shm_path(s) for s in segments]
        sems = [sem_path(s) for s in semaphores]
        made.extend(segs + sems)
        if segs:
            _create_as_nobody(segs, 0)
        if sems:
            _create_as_nobody(sems, SEM_T_SIZE)
        return segs + sems

    yield make
    for p in made:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _assert_names_nobody(exc: UntrustedObject, path: Path | None = None) -> None:
    assert isinstance(exc, shmpool.AttachError)
    assert exc.owner_uid == NOBODY and exc.owner == "nobody"
    assert "nobody" in str(exc) and f"uid {NOBODY}" in str(exc)
    if path is not None:
        assert exc.path == str(path) and str(path) in str(exc)


# --------------------------------------------------------------------- squatted names

@needs_root
def test_objects_another_user_created_first_are_refused_by_attach_connect_and_start(instance_name, squat):
    name = instance_name
    planted = squat(segments=[segment_name(name, "control"), segment_name(name, "jobs")],
                    semaphores=[semaphore_name(name, k) for k in ("lock", "jobs-lock", "jobs-free", "jobs-pending")])
    with pytest.raises(UntrustedObject) as err:
        shmpool.attach(name)
    _assert_names_nobody(err.value, planted[0])
    with pytest.raises(UntrustedObject) as err:
        shmpool.connect(name)
    _assert_names_nobody(err.value)
    with pytest.raises(UntrustedObject) as err:
        Coordinator(name, workers=0).start()  # neither a bare posix_ipc error nor a sweep of their objects
    _assert_names_nobody(err.value)
    assert all(p.exists() for p in planted), "another user's objects must be left alone, even by root"


def _hand_over_to_nobody(name: str) -> None:
    segments, semaphores = list_objects(name)
    for p in [shm_path(s) for s in segments] + [sem_path(s) for s in semaphores]:
        os.chown(p, NOBODY, NOBODY)
        os.chmod(p, 0o666)


@needs_root
def test_a_live_instance_of_another_user_serves_nothing_to_our_readers(instance_name, tmp_path, monkeypatch):
    # The squatter's coordinator runs, with data of their choosing, in their own runtime folder.
    squatter = Coordinator(instance_name, data_dir=tmp_path, workers=1).start()
    try:
        proto = squatter.create_proto_dimension(1, "poisoned")
        proto.add_layer(1, "served by another user")
        squatter.crystallize(1)
        _hand_over_to_nobody(instance_name)
        with pytest.raises(UntrustedObject) as err:
            shmpool.attach(instance_name)
        _assert_names_nobody(err.value, shm_path(segment_name(instance_name, "control")))
        with pytest.raises(UntrustedObject):
            shmpool.connect(instance_name)
        ours = tmp_path / "our-runtime"
        ours.mkdir(mode=0o700)
        monkeypatch.setenv("SHMPOOL_RUNTIME_DIR", str(ours))
        with pytest.raises(UntrustedObject) as err:
            Coordinator(instance_name, data_dir=tmp_path, workers=0).start()
        _assert_names_nobody(err.value)
    finally:
        monkeypatch.undo()
        squatter.stop()


@needs_root
def test_a_semaphore_replaced_by_another_users_is_refused(instance_name, tmp_path, squat):
    # The board and the table keep their locks and wake-ups in their segments (shmpool._core);
    # the coordinator's wake semaphore is the one a reader opens, when it asks for a reload.
    with Coordinator(instance_name, data_dir=tmp_path, workers=1):
        name = segment_name(instance_name, "jobs")
        posix_ipc.unlink_shared_memory(name)
        (planted,) = squat(segments=[name])
        with pytest.raises(UntrustedObject) as err:
            shmpool.connect(instance_name)
        _assert_names_nobody(err.value, planted)
        name = semaphore_name(instance_name, "wake")
        posix_ipc.unlink_semaphore(name)
        (planted,) = squat(semaphores=[name])
        with shmpool.attach(instance_name) as reader, pytest.raises(UntrustedObject) as err:
            reader.instance.wake_coordinator()
        _assert_names_nobody(err.value, planted)


@needs_root
def test_a_growth_or_pool_segment_replaced_by_another_users_is_refused(instance_name, tmp_path, squat):
    with Coordinator(instance_name, data_dir=tmp_path, workers=0):
        name = segment_name(instance_name, "pool2")
        posix_ipc.unlink_shared_memory(name)
        (planted,) = squat(segments=[name])
        with pytest.raises(UntrustedObject) as err:
            shmpool.attach(instance_name)
        _assert_names_nobody(err.value, planted)


def test_our_own_objects_with_group_or_other_bits_are_refused(instance_name, tmp_path):
    with Coordinator(instance_name, data_dir=tmp_path, workers=0):
        for path in (shm_path(segment_name(instance_name, "pool1")), shm_path(segment_name(instance_name, "control"))):
            os.chmod(path, 0o644)
            with pytest.raises(UntrustedObject) as err:
                shmpool.attach(instance_name)
            assert err.value.owner_uid == os.geteuid() and err.value.mode == 0o644
            assert err.value.path == str(path) and "mode 0644" in str(err.value)
            os.chmod(path, 0o600)
        shmpool.attach(instance_name).close()  # 0600 again: trusted


def test_untrusted_object_travels_as_itself():
    import pickle

    from shmpool.jobs.codec import decode_error, encode_error

    exc = UntrustedObject(name="x", path="/dev/shm/shmpool.x.control", owner_uid=NOBODY, mode=0o666)
    for copy in (pickle.loads(pickle.dumps(exc)), decode_error(encode_error(exc), "job")):
        assert type(copy) is UntrustedObject and copy.owner_uid == NOBODY and str(copy) == str(exc)


# --------------------------------------------------------------------- runtime folder

@pytest.fixture
def no_runtime_env(monkeypatch, tmp_path):
    """No override, no XDG, and a private stand-in for /tmp."""
    monkeypatch.delenv("SHMPOOL_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    fake_tmp = tmp_path / "tmp"
    fake_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fake_tmp))
    return fake_tmp


@needs_root
def test_default_runtime_folder_pre_created_by_another_user_is_refused(no_runtime_env, instance_name):
    folder = no_runtime_env / f"shmpool-{os.geteuid()}"
    folder.mkdir()
    os.chown(folder, NOBODY, NOBODY)
    os.chmod(folder, 0o777)
    with pytest.raises(UnsafeRuntimeDir) as err:
        runtime_dir()
    assert err.value.path == str(folder) and err.value.owner_uid == NOBODY and err.value.mode == 0o777
    assert "another user" in str(err.value) and "nobody" in str(err.value)
    with pytest.raises(UnsafeRuntimeDir):
        Coordinator(instance_name, workers=0)  # before it builds the sample or takes a lock there


def test_runtime_folder_of_ours_writable_by_others_is_refused(no_runtime_env):
    folder = no_runtime_env / f"shmpool-{os.geteuid()}"
    folder.mkdir()
    os.chmod(folder, 0o777)
    with pytest.raises(UnsafeRuntimeDir) as err:
        runtime_dir()
    assert err.value.mode == 0o777 and err.value.owner_uid == os.geteuid()
    assert "group or others may write" in str(err.value)


def test_runtime_folder_that_is_a_symlink_is_refused(no_runtime_env, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = no_runtime_env / f"shmpool-{os.geteuid()}"
    link.symlink_to(target)
    with pytest.raises(UnsafeRuntimeDir) as err:
        runtime_dir()
    assert err.value.path == str(link) and "symlink" in str(err.value)


def test_runtime_folder_is_created_0700_and_xdg_is_preferred_but_the_override_comes_first(
        no_runtime_env, tmp_path, monkeypatch):
    default = runtime_dir()
    assert default == no_runtime_env / f"shmpool-{os.geteuid()}"
    assert stat.S_IMODE(default.stat().st_mode) == 0o700
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert runtime_dir() == xdg / "shmpool"
    assert stat.S_IMODE((xdg / "shmpool").stat().st_mode) == 0o700
    override = tmp_path / "override"
    override.mkdir(mode=0o700)
    monkeypatch.setenv("SHMPOOL_RUNTIME_DIR", str(override))
    assert runtime_dir() == override


def test_an_xdg_folder_that_is_not_ours_alone_is_passed_over(no_runtime_env, tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    os.chmod(xdg, 0o755)  # XDG says 0700; e.g. another user's folder still named after `su`
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert runtime_dir() == no_runtime_env / f"shmpool-{os.geteuid()}"
    assert not (xdg / "shmpool").exists()


# --------------------------------------------------------------------- job allow-list

@pytest.fixture
def canary(monkeypatch, tmp_path):
    """Workers find tests/ on their path; importing _jobs_canary writes this file."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    marker = tmp_path / "canary-imported"
    monkeypatch.setenv("SHMPOOL_TEST_CANARY", str(marker))
    return marker


def test_a_job_outside_the_allow_list_is_unknown_and_never_imported(instance_name, tmp_path, canary, monkeypatch):
    # Whatever our own environment says, the coordinator's list is what its workers get.
    monkeypatch.setenv("SHMPOOL_JOBS", '{"jobs": {}, "modules": ["os", "_jobs_canary"]}')
    with Coordinator(instance_name, data_dir=tmp_path, workers=1, jobs={"double": _jobs.double}):
        with shmpool.connect(instance_name) as client:
            assert client.submit("double", 21).result(10) == 42
            assert client.call("ping", timeout=10) > 0  # the built-ins stay available
            for job in ("os:spawnlp", "_jobs_canary:touch", "_jobs:echo", "_jobs:double", "nope"):
                with pytest.raises(UnknownJob) as err:
                    client.submit(job, os.P_WAIT, "true", "true").result(10)
                assert err.value.job == job and "allow-list" in err.value.reason
    assert not canary.exists(), "a refused job's module was imported in the worker"


def test_job_modules_allow_functions_defined_there_and_nothing_they_import(instance_name, tmp_path, canary):
    with Coordinator(instance_name, data_dir=tmp_path, workers=1, job_modules=["_jobs_canary"]):
        with shmpool.connect(instance_name) as client:
            assert client.submit("_jobs_canary:touch").result(10) == "imported"
            with pytest.raises(UnknownJob) as err:
                client.submit("_jobs_canary:os_system", "true").result(10)  # os.system, re-exported
            assert "not defined in an allowed module" in err.value.reason
            with pytest.raises(UnknownJob) as err:
                client.submit("_jobs_canary:absent").result(10)
            assert "has no function absent" in err.value.reason
            with pytest.raises(UnknownJob):
                client.submit("_jobs:echo").result(10)
    assert canary.exists()  # the allowed module was imported: the absence above means something


def test_the_default_allows_only_the_built_ins_and_imports_nothing():
    import sys

    policy = JobPolicy()
    assert policy.resolve("lookup") is not None
    for job in ("os:system", "_jobs_canary:touch", "subprocess:run"):
        with pytest.raises(UnknownJob, match="allow-list"):
            policy.resolve(job)
    assert "_jobs_canary" not in sys.modules


def test_allow_list_entries_a_worker_could_not_import_are_refused_at_construction(instance_name):
    def nested(reader):
        return 1

    bad = [({"x": lambda reader: 1}, ()), ({"x": nested}, ()), ({"lookup": _jobs.echo}, ()),
           ({"x": "not a path"}, ()), ({"bad name!": _jobs.echo}, ()), (None, ["os;rm"]), (None, [""])]
    for jobs, modules in bad:
        with pytest.raises(InvalidJob):
            Coordinator(instance_name, workers=0, jobs=jobs, job_modules=modules)
    policy = JobPolicy.build({"double": _jobs.double, "s": "_jobs:slow"}, "_jobs_canary")
    assert policy.jobs == {"double": "_jobs:double", "s": "_jobs:slow"} and policy.modules == ("_jobs_canary",)
    assert JobPolicy.from_json(policy.to_json()) == policy


def test_serve_takes_the_allow_list_from_flags():
    args = build_parser().parse_args(["serve", "x", "--job-module", "myjobs", "--job-module", "pkg.jobs",
                                      "--job", "double=mymod:double"])
    assert args.job_modules == ["myjobs", "pkg.jobs"] and dict(args.jobs) == {"double": "mymod:double"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "x", "--job", "no-target"])


@needs_root
def test_cleanup_leaves_another_users_objects_and_says_so(instance_name, squat, capsys):
    from shmpool.coordinator.cli import main

    (planted,) = squat(segments=[segment_name(instance_name, "control")])
    ours = posix_ipc.Semaphore(semaphore_name(instance_name, "lock"), posix_ipc.O_CREX, mode=0o600)
    ours.close()
    assert main(["cleanup", instance_name]) == 1
    out, err = capsys.readouterr()
    assert out == f"shmpool: removed 1 object of {instance_name!r} (1 semaphore)\n"  # one summary line
    assert segment_name(instance_name, "control") in err and f"uid {NOBODY}" in err
    said = [line for line in err.splitlines() if " | INFO " not in line]  # log lines aside
    assert len(said) == 1 and "Traceback" not in err
    assert planted.exists() and not sem_path(semaphore_name(instance_name, "lock")).exists()


# ----------------------------------------------------------------------------- cleanup, foreign objects

# Imports everything the CLI needs while still root (the interpreter lives under /root, which other
# users cannot read), then becomes uid/gid argv[1] and runs ``shmpool ...`` as that user. The CLI
# and the package import most modules on first use (loguru too), so the whole coordinator and
# loguru are imported here: the graph a command may reach.
_AS_USER = """
import os, sys, traceback, linecache
import shmpool.coordinator.cli, shmpool.coordinator.coordinator, loguru
uid = int(sys.argv[1])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
sys.argv = ["shmpool", *sys.argv[2:]]
sys.exit(shmpool.coordinator.cli.main(sys.argv[1:]))
"""


def _make_foreign_objects(name: str, uid: int) -> list[str]:
    """A segment and a semaphore of instance ``name`` owned by ``uid``, mode 0600 (as root)."""
    seg = posix_ipc.SharedMemory(segment_name(name, "control"), posix_ipc.O_CREX, mode=0o600, size=4096)
    seg.close_fd()
    sem = posix_ipc.Semaphore(semaphore_name(name, "lock"), posix_ipc.O_CREX, mode=0o600, initial_value=1)
    sem.close()
    entries = [f"{shmpool.substrate.names.PREFIX}{name}.control", f"sem.{shmpool.substrate.names.PREFIX}{name}.lock"]
    for entry in entries:
        os.chown(SHM_DIR / entry, uid, uid)
    return entries


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: objects owned by one user, cleaned by another")
def test_cleanup_of_another_users_instance_is_one_line_not_a_traceback(instance_name):
    owner, intruder = 65534, 65533
    entries = _make_foreign_objects(instance_name, owner)
    home = tempfile.mkdtemp(prefix="shmpool-intruder-")  # a runtime dir the intruder may write
    try:
        os.chown(home, intruder, intruder)
        env = {**os.environ, "SHMPOOL_RUNTIME_DIR": home}
        result = subprocess.run([sys.executable, "-c", _AS_USER, str(intruder), "cleanup", instance_name],
                                capture_output=True, text=True, timeout=60, env=env)
        assert "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        line = lines[0]
        assert segment_name(instance_name, "control") in line and semaphore_name(instance_name, "lock") in line
        assert "permission denied" in line and f"owned by uid {owner}" in line and f"uid {intruder}" in line
        assert all((SHM_DIR / e).exists() for e in entries), "nothing of another user may go"
    finally:
        shutil.rmtree(home, ignore_errors=True)
        for entry in entries:  # cleanup() leaves another user's objects alone, even as root
            (SHM_DIR / entry).unlink(missing_ok=True)
    assert list_objects(instance_name) == ([], [])


def test_the_xdg_warning_names_the_folder_used_instead(tmp_path):
    """The warning said 'using /tmp instead' while the folder used was /tmp/shmpool-<uid> (found
    by the docs read-through): it names the folder itself now. A process of its own: the
    warning is given once per process and value."""
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    os.chmod(xdg, 0o755)
    fake_tmp = tmp_path / "tmp"
    fake_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SHMPOOL_RUNTIME_DIR", "SHMPOOL_WARNINGS")}
    env.update(XDG_RUNTIME_DIR=str(xdg), TMPDIR=str(fake_tmp))
    code = ("from shmpool.substrate.names import runtime_dir; from loguru import logger; "
            "logger.enable('shmpool'); print(runtime_dir())")  # enabled as the CLI and a coordinator do
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    used = fake_tmp / f"shmpool-{os.geteuid()}"
    assert result.stdout.strip() == str(used), result.stderr
    assert f"using {used} instead" in result.stderr, result.stderr
