"""A full disk at each stage: one message naming the path, exit code 2, no finished file touched, and the rerun
after freeing space finishes without redoing finished work.

The disk is a real one: a small tmpfs mounted in a user + mount namespace (``unshare -rm``), filled by a file
that leaves 1 MB free just before the stage under test. Skipped where namespaces are not available.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from datasets import synthetic
from loftr_sfm.io import DiskFullError, atomic_path, require_space


def _unshare_works() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = "mkdir -p /tmp/.loftr_probe && mount -t tmpfs -o size=1m tmpfs /tmp/.loftr_probe"
    return subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True).returncode == 0


# the driver runs inside the namespace: mount, then for each stage fill the disk, run `reconstruct`, free it,
# run the stage alone; it prints one JSON record per step
DRIVER = textwrap.dedent(r'''
    import hashlib, json, os, subprocess, sys
    from pathlib import Path

    mnt, images = Path(sys.argv[1]), sys.argv[2]
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True)
    out = mnt / "out"
    common = ["--images", images, "--output", str(out)]
    cli = [sys.executable, "-m", "loftr_sfm.cli"]

    def digests():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*"))
                if p.is_file() and not p.name.startswith(".") and p.name != "timings.json"}

    def fill(leave):
        st = os.statvfs(mnt)
        size = st.f_bavail * st.f_frsize - leave
        with open(mnt / "filler", "wb") as f:
            f.truncate(0)
            f.write(b"\0" * max(size, 0))

    stages = [("matching", ["pairs", *common, "--pairs", "exhaustive"]), ("keypoints", ["match", *common, "--matcher", "sift"]),
              ("database", ["keypoints", *common]), ("mapping", ["database", *common])]
    for stage, previous in stages:  # the stage before this one, alone, with room
        r = subprocess.run(cli + previous, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        before = digests()
        fill(2**20)
        r = subprocess.run(cli + ["reconstruct"] + common + ["--pairs", "exhaustive", "--matcher", "sift"],
                           capture_output=True, text=True)
        (mnt / "filler").unlink()
        print(json.dumps({"stage": stage, "code": r.returncode, "stderr": r.stderr[-3000:], "before": before,
                          "after": digests()}), flush=True)
    r = subprocess.run(cli + ["reconstruct"] + common + ["--pairs", "exhaustive", "--matcher", "sift"],
                       capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    print(json.dumps({"stage": "rerun", "code": r.returncode, "stderr": r.stderr[-3000:],
                      "registered": summary.get("registered"), "after": digests()}), flush=True)
''')


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` (user and mount namespaces) to mount a small tmpfs")
def test_full_disk_at_each_stage_names_the_path_and_keeps_finished_files(tmp_path):
    scene = tmp_path / "scene"
    synthetic.generate(scene, synthetic.SceneConfig(num_images=5, width=400, height=300, focal=340, arc_deg=32, seed=3))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(["unshare", "-rm", sys.executable, str(driver), str(tmp_path / "mnt"), str(scene / "images")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [s["stage"] for s in steps] == ["matching", "keypoints", "database", "mapping", "rerun"]
    failing_file = {"matching": "matches.h5", "keypoints": "merged_matches.h5", "database": "database.db",
                    "mapping": "model"}
    for s in steps[:-1]:
        assert s["code"] == 2, (s["stage"], s["stderr"])
        last = [line for line in s["stderr"].splitlines() if "ERROR" in line][-1]
        assert "no space left for " in last and f"out/{failing_file[s['stage']]}" in last, last
        assert "Traceback" not in s["stderr"]
        assert {k: s["after"].get(k) for k in s["before"]} == s["before"], s["stage"]  # no finished file changed
    rerun = steps[-1]
    assert rerun["code"] == 0, rerun["stderr"]
    assert rerun["registered"] == 5
    for name in ("pairs.txt", "matches.h5", "features.h5", "merged_matches.h5"):  # finished work was kept
        assert rerun["after"][name] == steps[-2]["after"][name], name


def test_atomic_path_turns_a_full_disk_into_one_message_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("finished")
    with pytest.raises(DiskFullError, match=r"no space left for .*result\.txt"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "finished"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_require_space_names_the_path_and_the_sizes(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    require_space(tmp_path / "x.h5", 0)
    with pytest.raises(DiskFullError, match=r"no space left for .*x\.h5: .* MB free on its device, about .* MB needed"):
        require_space(tmp_path / "not yet" / "x.h5", free + 2**30)
