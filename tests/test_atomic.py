"""Atomic files and folders: nothing half-written stays visible, stale temporaries of dead processes go."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from zsad import atomic


def test_folder_appears_only_when_complete(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_folder(tmp_path / "f") as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_folder(tmp_path / "f") as tmp:
        (tmp / "a.txt").write_text("done")
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["a.txt"]  # no marker file in the finished folder
    with pytest.raises(FileExistsError):
        with atomic.atomic_folder(tmp_path / "f"):
            pass
    with atomic.atomic_folder(tmp_path / "f", replace=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_stale_temporaries_of_dead_processes_are_removed_and_nothing_else(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".run.tmp-{dead}-abc"
    stale.mkdir()
    (stale / ".zsad-partial").touch()
    live = tmp_path / f".run.tmp-{os.getpid()}-def"  # this process: a writer in progress
    live.mkdir()
    (live / ".zsad-partial").touch()
    users = tmp_path / f".notes.tmp-{dead}-x"  # same name shape, but no marker: not ours
    users.mkdir()
    with atomic.atomic_folder(tmp_path / "run") as tmp:
        (tmp / "x").write_text("1")
    assert not stale.exists() and live.exists() and users.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_writing_leaves_nothing_behind(tmp_path, sig):
    script = textwrap.dedent(f"""
        import sys, time
        from zsad import atomic
        with atomic.atomic_folder({str(tmp_path / 'run')!r}) as tmp:
            (tmp / "part").write_text("x")
            print("writing", flush=True)
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_write_bytes_replaces_atomically(tmp_path):
    path = atomic.write_bytes(tmp_path / "a" / "b.bin", b"1")
    atomic.write_bytes(path, b"22")
    assert path.read_bytes() == b"22" and [p.name for p in path.parent.iterdir()] == ["b.bin"]
