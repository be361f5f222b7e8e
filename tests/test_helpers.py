"""The one-of-each helpers: file locks, parent-death signals, the file hasher, and our own copies of
upstream private helpers (datasketch's MurmurHash finalizer and LSH optimizer, presidio's lemmas).

Locks and signals are checked against real second processes and a real SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from curate.locks import FileLock, LockHeldError, is_locked
from curate.manifest import content_hash

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 30.0  # how long to wait for a process to do what the test waits for (not a timing assertion)


def python(code: str, **kwargs) -> subprocess.Popen:
    """A real second process running `code`, with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([PYTHON, "-c", textwrap.dedent(code)], env=env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """Whether pid no longer runs (a zombie waiting for a reaper that is not us counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


# --------------------------------------------------------------------------- locks


def holder(path: Path) -> subprocess.Popen:
    """A process that takes the lock, says so, and holds it until its stdin gets a line; then it writes
    `path.released` and exits (which drops the lock)."""
    proc = python(f"""
        import sys
        from pathlib import Path
        from curate.locks import FileLock
        with FileLock({str(path)!r}):
            print("held", flush=True)
            sys.stdin.readline()
            Path({str(path) + '.released'!r}).write_text("yes")
    """)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def test_a_lock_held_by_another_process_refuses_at_once_then_frees(tmp_path):
    path = tmp_path / "sub" / "x.lock"  # the folder is created
    proc = holder(path)
    try:
        assert is_locked(path)
        with pytest.raises(LockHeldError, match=rf"^{path} is held by another process$"):
            FileLock(path, blocking=False).acquire()
    finally:
        proc.communicate("go\n", timeout=DEADLINE_S)
    assert not is_locked(path)
    with FileLock(path, blocking=False) as lock:
        assert lock.held and is_locked(path)
    assert not lock.held and not is_locked(path)


def _waiting_on(path: Path) -> bool:
    """Whether some process is blocked in flock on `path` (the kernel lists waiters with '->' in /proc/locks)."""
    inode = os.stat(path).st_ino
    return any(line.split()[1] == "->" and line.split()[-3].endswith(f":{inode}")
               for line in Path("/proc/locks").read_text().splitlines())


def test_a_blocking_lock_waits_for_the_other_process(tmp_path):
    path = tmp_path / "x.lock"
    proc = holder(path)
    seen: list[bool] = []

    def take() -> None:
        with FileLock(path):  # blocks until the holder exits
            seen.append(Path(str(path) + ".released").exists())

    thread = threading.Thread(target=take)
    thread.start()
    try:
        wait_for(lambda: _waiting_on(path), "the thread to wait on the lock")
        assert seen == []
    finally:
        proc.communicate("go\n", timeout=DEADLINE_S)
        thread.join(DEADLINE_S)
    assert seen == [True]  # it got the lock only after the holder let go


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "x.lock"
    proc = holder(path)
    proc.kill()
    proc.communicate(timeout=DEADLINE_S)
    assert not is_locked(path)
    FileLock(path, blocking=False).acquire().release()


def test_two_locks_of_one_process_exclude_each_other(tmp_path):
    """What the review server's `Workspace.locked` relies on to see its own lock."""
    path = tmp_path / "x.lock"
    assert not is_locked(path) and not path.exists()  # a probe creates nothing
    first = FileLock(path, blocking=False).acquire()
    try:
        with pytest.raises(LockHeldError):
            FileLock(path, blocking=False).acquire()
        with pytest.raises(RuntimeError, match="already held"):
            first.acquire()
    finally:
        first.release()
    first.release()  # twice is fine


def test_the_recipe_runner_says_which_run_folder_is_busy(tmp_path):
    from recipes.commands import RunError
    from recipes.runner import _locked

    with _locked(tmp_path / "run"):
        with pytest.raises(RunError, match="is in use by another run of this recipe"), _locked(tmp_path / "run"):
            pass
    with _locked(tmp_path / "run"):  # released on the way out
        pass


# --------------------------------------------------------------------------- parent death


def _parent_of_a_sleeper(arm: bool) -> tuple[subprocess.Popen, int]:
    """A process that starts `sleep` (armed with die_with_parent, or not) and prints its pid."""
    preexec = "functools.partial(die_with_parent, parent=os.getpid())" if arm else "None"
    parent = python(f"""
        import functools, os, subprocess, time
        from curate.processes import die_with_parent
        child = subprocess.Popen(["sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 preexec_fn={preexec})
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    return parent, int(parent.stdout.readline())


@pytest.mark.parametrize("arm", [True, False])
def test_a_child_dies_with_its_sigkilled_parent(arm):
    parent, child = _parent_of_a_sleeper(arm)
    try:
        assert not gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(DEADLINE_S)
        if arm:
            wait_for(lambda: gone(child), "the child to get its parent-death signal")
        else:  # the control: without the helper the orphan lives on
            assert not gone(child)
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_died_before_it_armed_the_signal_exits(tmp_path):
    """The window between fork and prctl: the kernel would send nothing, so the helper exits itself."""
    survived = tmp_path / "survived"
    parent = python(f"""
        import os, time
        from curate.processes import die_with_parent
        first = os.getpid()
        pid = os.fork()
        if pid == 0:
            while os.getppid() == first:  # until the parent is dead and this process adopted
                time.sleep(0.01)
            die_with_parent(parent=first)
            open({str(survived)!r}, "w").write("yes")
            os._exit(0)
        print(pid, flush=True)
        time.sleep(600)
    """)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.communicate(timeout=DEADLINE_S)
    wait_for(lambda: gone(child), "the child to exit")
    assert not survived.exists()


def test_die_with_parent_arms_the_signal_here():
    """In a child of this test: armed (Linux), and the parent it names is alive, so it returns."""
    done = subprocess.run([PYTHON, "-c", "import os; from curate.processes import die_with_parent; "
                           "print(die_with_parent(parent=os.getppid()))"],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


def test_a_guarded_process_takes_the_processes_a_library_started_with_it_when_sigkilled():
    """vLLM spawns its engine core itself, in its own way: here a grandchild in its own session, which no
    parent-death signal of ours reaches. The guard's watchdog stops it when the guarded process is killed."""
    parent = python("""
        import subprocess, sys, time
        from curate.processes import guard_descendants
        assert guard_descendants()
        lib = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        print(lib.pid, flush=True)
        time.sleep(600)
    """)
    spawned = int(parent.stdout.readline())
    try:
        assert not gone(spawned)
        parent.send_signal(signal.SIGKILL)
        parent.wait(DEADLINE_S)
        wait_for(lambda: gone(spawned), "the watchdog to stop what the killed process had started")
    finally:
        if not gone(spawned):
            os.kill(spawned, signal.SIGKILL)


def test_an_unguarded_library_child_outlives_a_sigkill():
    """The control: without the guard the same grandchild is orphaned and keeps running."""
    parent = python("""
        import subprocess, sys, time
        lib = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        print(lib.pid, flush=True)
        time.sleep(600)
    """)
    spawned = int(parent.stdout.readline())
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait(DEADLINE_S)
        time.sleep(1)
        assert not gone(spawned)
    finally:
        os.kill(spawned, signal.SIGKILL)


# --------------------------------------------------------------------------- the file hasher


def test_one_hasher_for_manifests_and_the_embedders_fingerprint(tmp_path):
    from curate.embeddings import _SMALL_FILE, embedder_identity
    from curate.models import ResolvedModel

    folder = tmp_path / "model"
    (folder / ".git").mkdir(parents=True)
    (folder / "config.json").write_text('{"dim": 384}')
    weights = folder / "weights.bin"
    weights.write_bytes(b"\1" * (_SMALL_FILE + 1))
    (folder / ".git" / "HEAD").write_text("ref: main")
    full = content_hash(folder)
    fingerprint = content_hash(folder, skip=lambda rel: ".git" in rel.parts, stat_above=_SMALL_FILE)
    assert full.startswith("blake2b:") and full != fingerprint

    (folder / ".git" / "HEAD").write_text("ref: other")  # skipped
    assert content_hash(folder, skip=lambda rel: ".git" in rel.parts, stat_above=_SMALL_FILE) == fingerprint
    assert content_hash(folder) != full

    # A large file enters the fingerprint by size and mtime: same bytes, new mtime -> changed;
    # new bytes under the old size and mtime -> unchanged (that is the price of not reading it).
    stat = weights.stat()
    weights.write_bytes(b"\2" * (_SMALL_FILE + 1))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_hash(folder, skip=lambda rel: ".git" in rel.parts, stat_above=_SMALL_FILE) == fingerprint
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert content_hash(folder, skip=lambda rel: ".git" in rel.parts, stat_above=_SMALL_FILE) != fingerprint

    first = embedder_identity(ResolvedModel("embedder", folder, "path"))
    (folder / "config.json").write_text('{"dim": 768}')  # a small file enters by its bytes
    assert embedder_identity(ResolvedModel("embedder", folder, "path")) != first


# --------------------------------------------------------------------------- datasketch's private helpers


def _fmix64_reference(value: int) -> int:
    """MurmurHash3's fmix64 in plain Python integers, from the published algorithm."""
    mask = (1 << 64) - 1
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & mask
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & mask
    return value ^ (value >> 33)


def test_our_fmix_agrees_with_datasketch():
    import datasketch.minhash
    from datasketch import MinHash

    from curate.dedup.near import _fmix

    rng = np.random.default_rng(0)
    values64 = np.concatenate([rng.integers(0, 2**64, 20_000, dtype=np.uint64, endpoint=False),
                               np.array([0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1], dtype=np.uint64)])
    values32 = values64.astype(np.uint32)
    ours64, ours32 = _fmix(values64, 64), _fmix(values32, 32)
    assert ours64.dtype == np.uint64 and ours32.dtype == np.uint32
    assert [int(v) for v in ours64[:500]] == [_fmix64_reference(int(v)) for v in values64[:500]]

    # datasketch's own, while it still has it (private: it may go; our copy stays)
    theirs = getattr(datasketch.minhash, "_fmix", None)
    if theirs is not None:
        assert np.array_equal(ours64, theirs(values64, 64)) and np.array_equal(ours32, theirs(values32, 32))

    # datasketch's public MinHash applies fmix32 before (a * x + b) mod 2**32: undo the permutation.
    m = MinHash(num_perm=4, seed=1, hashfunc=lambda x: x)
    a, b = (p.astype(np.uint64) for p in m.permutations)
    inverse = pow(int(a[0]), -1, 2**32)
    for value in values32[:300]:
        one = MinHash(num_perm=4, seed=1, hashfunc=lambda x: x)
        one.update(int(value))
        mixed = ((int(one.hashvalues[0]) - int(b[0])) * inverse) % 2**32
        assert mixed == int(_fmix(np.array([value], dtype=np.uint32), 32)[0])


def test_our_lsh_parameters_are_the_ones_minhash_lsh_picks():
    from datasketch import MinHashLSH

    from curate.dedup.near import lsh_params

    for num_perm in (16, 64, 128):
        for threshold in (0.3, 0.5, 0.7, 0.8, 0.9):
            for weights in ((0.5, 0.5), (0.2, 0.8), (0.9, 0.1)):
                ours = lsh_params(threshold, num_perm, weights)
                try:
                    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
                except ValueError as exc:  # it refuses the optimum it found when that is a single band
                    assert "b < 2" in str(exc) and ours[0] < 2, (threshold, num_perm, weights)
                    continue
                assert ours == (lsh.b, lsh.r), (threshold, num_perm, weights)


# --------------------------------------------------------------------------- presidio's lemmas


def test_every_token_has_a_lemma_for_presidio_context_words():
    """A blank spaCy pipeline has no lemmatizer; presidio matches its context words against lemmas."""
    from synth.privacy import PrivacyConfig, _active_entities, _analyzer

    config = PrivacyConfig()
    engine, _ = _analyzer(_active_entities(config), config.ner_model, config.phone_regions)
    artifacts = engine.nlp_engine.process_text("My Social Security Number is 078-05-1120", "en")
    assert artifacts.lemmas == [token.lower_ for token in artifacts.tokens]
    assert {"social", "security", "number"} <= set(artifacts.keywords)
    texts = ["Call the Phone desk", "no digits here"]
    batch = list(engine.nlp_engine.process_batch(texts, "en"))
    assert [list(a.lemmas) for _, a in batch] == [["call", "the", "phone", "desk"], ["no", "digits", "here"]]
