"""bench/gpu_data.py: the exact data split into parts the device tool carries, and joined and unpacked there.

Small fake packs of random bytes stand in for the CIFAR packs, and a fake cifarpack module in the stage folder for
the real unpacking (which takes a minute): it copies the joined pack it gets, so the joining is checked byte for byte.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_data.py"
spec = importlib.util.spec_from_file_location("gpu_data", SCRIPT)
gpu_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_data)

MIB = 1 << 20
FAKE_CIFARPACK = '''
import os, time
from pathlib import Path

def unpack(pack, out):
    data = Path(pack).read_bytes()
    time.sleep(float(os.environ.get("FAKE_UNPACK_SECONDS", "0")))
    dest = Path(out) / "unpacked" / Path(pack).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    with open(Path(out) / "unpack-calls.txt", "a") as f:
        f.write(Path(pack).name + "\\n")
    return [f"{dest}: fake unpack"]
'''


@pytest.fixture
def shared(tmp_path):
    """A fake ../shared/data: two random-bytes packs, cifarpack.py and MNIST's four .gz files."""
    rng = __import__("random").Random(0)
    root = tmp_path / "shared"
    (root / "cifar-lossless").mkdir(parents=True)
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name, size in (("cifar10", 10_000), ("cifar100", 7_000)):
        (root / "cifar-lossless" / f"{name}.npz").write_bytes(rng.randbytes(size))
    (root / "cifar-lossless" / "cifarpack.py").write_text("raise SystemExit('the real one is not used here')\n")
    for name in gpu_data.MNIST_FILES:
        (root / "MNIST" / "raw" / name).write_bytes(rng.randbytes(300))
    return root


@pytest.fixture
def staged(shared, tmp_path, capsys):
    """The fake packs staged in parts of 4,000 bytes, with the fake cifarpack in place of the copied one."""
    out = tmp_path / "stage"
    assert gpu_data.main(["stage", "--out", str(out), "--shared", str(shared), "--part-mib", str(4000 / MIB)]) == 0
    (out / "cifarpack.py").write_text(FAKE_CIFARPACK)
    return out, capsys.readouterr().out


def device_copy(stage: Path, dest: Path, without: tuple[str, ...] = ()) -> Path:
    """What a device call has received so far: the stage folder less the parts not carried yet."""
    shutil.copytree(stage, dest, dirs_exist_ok=True)
    for name in without:
        (dest / "parts" / name).unlink()
    return dest


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_stage_splits_the_packs_and_writes_the_manifest(staged, shared):
    stage, printed = staged
    manifest = json.loads((stage / "manifest.json").read_text())
    for pack, size, parts in zip(manifest["packs"], (10_000, 7_000), (3, 2)):
        original = (shared / "cifar-lossless" / pack["file"]).read_bytes()
        assert (pack["size"], pack["md5"], len(pack["parts"])) == (size, md5(original), parts)
        joined = b"".join((stage / p["path"]).read_bytes() for p in pack["parts"])
        assert joined == original
        assert all(p["size"] <= 4000 and md5((stage / p["path"]).read_bytes()) == p["md5"] for p in pack["parts"])
    assert sorted(f["path"] for f in manifest["mnist"]["files"]) == sorted(
        f"MNIST/raw/{name}" for name in gpu_data.MNIST_FILES)
    assert "in 3 part(s)" in printed and "in 2 part(s)" in printed
    assert "call 1 (final)" in printed                       # all of it fits one call
    assert f"command: RESLAB_STAGE={stage} bash bench/gpu_lab.sh $OUT" in printed
    assert json.dumps([f"{stage}/manifest.json", f"{stage}/cifarpack.py"])[:-1] in printed


def test_stage_refuses_bad_sizes_and_missing_files_in_one_line(shared, tmp_path, capsys):
    stage = ["stage", "--out", str(tmp_path / "stage"), "--shared", str(shared)]

    def refused(args: list[str], message: str) -> None:
        assert gpu_data.main(stage + args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    refused(["--part-mib", "0"], "--part-mib must be above 0")
    refused(["--part-mib", "-2"], "--part-mib must be above 0")
    missing = shared / "MNIST" / "raw" / gpu_data.MNIST_FILES[0]
    missing.unlink()
    refused([], f"no {missing} (--shared names the folder holding cifar-lossless/ and MNIST/raw/)")


def test_assemble_in_two_steps_then_skips_what_is_done(staged, tmp_path, capsys):
    stage, _ = staged
    device, data = tmp_path / "device", tmp_path / "data"
    device_copy(stage, device, without=("cifar100.npz.part1",))     # call 1 has arrived, call 2 has not
    assert gpu_data.main(["assemble", str(device), str(data)]) == 0
    out = capsys.readouterr().out
    assert "cifar10: unpacked into" in out and "cifar100: 1 of 2 parts here (missing parts/cifar100.npz.part1): " \
                                                "not yet" in out
    assert (data / "unpacked" / "cifar10.npz").read_bytes() == (stage.parent / "shared" / "cifar-lossless" /
                                                               "cifar10.npz").read_bytes()
    assert not (data / "cifar10.npz").exists()                     # the joined file is removed
    assert json.loads((data / ".done-cifar10.json").read_text())["files"] == 1
    for name in gpu_data.MNIST_FILES:
        assert (data / "MNIST" / "raw" / name).read_bytes() == (stage / "MNIST" / "raw" / name).read_bytes()

    device_copy(stage, device)                                      # the last part arrives
    assert gpu_data.main(["assemble", str(device), str(data)]) == 0
    out = capsys.readouterr().out
    assert "cifar10: already unpacked" in out and "skipped" in out and "mnist: already in place, skipped" in out
    assert "cifar100: unpacked into" in out
    assert (data / "unpack-calls.txt").read_text().split() == ["cifar10.npz", "cifar100.npz"]   # each once
    assert (data / "unpacked" / "cifar100.npz").read_bytes() == (stage.parent / "shared" / "cifar-lossless" /
                                                                "cifar100.npz").read_bytes()


def test_a_corrupted_part_is_refused_with_one_line(staged, tmp_path, capsys):
    stage, _ = staged
    device, data = device_copy(staged[0], tmp_path / "device"), tmp_path / "data"
    part = device / "parts" / "cifar10.npz.part1"
    blob = bytearray(part.read_bytes())
    blob[100] ^= 0xFF
    part.write_bytes(bytes(blob))
    assert gpu_data.main(["assemble", str(device), str(data), "--pack", "cifar10"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.fullmatch(r"error: cifar10: part parts/cifar10\.npz\.part1 has md5 [0-9a-f]{32}, the manifest says "
                        r"[0-9a-f]{32}: .*", err[0])
    assert not (data / ".done-cifar10.json").exists() and not (data / "cifar10.npz").exists()
    assert not (data / "unpack-calls.txt").exists()
    assert gpu_data.main(["status", str(device)]) == 1              # the status of a call says so too
    assert "parts/cifar10.npz.part1 has md5" in capsys.readouterr().out


def test_a_pack_asked_for_with_parts_missing_is_an_error(staged, tmp_path, capsys):
    stage, _ = staged
    device = device_copy(stage, tmp_path / "device", without=("cifar100.npz.part0",))
    assert gpu_data.main(["assemble", str(device), str(tmp_path / "data"), "--pack", "cifar100"]) == 1
    assert capsys.readouterr().err.strip() == \
        "error: cifar100: 1 of 2 parts here (missing parts/cifar100.npz.part0)"
    assert gpu_data.main(["status", str(device)]) == 0
    assert "cifar100: 1 of 2 parts here" in capsys.readouterr().out


def test_two_assembles_at_once_unpack_a_pack_once(staged, tmp_path):
    stage, _ = staged
    data = tmp_path / "data"
    env = {**os.environ, "FAKE_UNPACK_SECONDS": "0.6"}
    cmd = [sys.executable, str(SCRIPT), "assemble", str(stage), str(data), "--pack", "cifar10"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)                                                 # the first one holds the lock by now
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=20)
    out = first.communicate(timeout=20)[0]
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert (data / "unpack-calls.txt").read_text().split() == ["cifar10.npz"]
    assert "cifar10: unpacked into" in out
    assert "waiting for it" in second.stdout and "cifar10: already unpacked" in second.stdout


def test_background_assemble_runs_in_a_session_of_its_own(staged, tmp_path):
    stage, _ = staged
    data, log = tmp_path / "data", tmp_path / "assemble.log"
    env = {**os.environ, "FAKE_UNPACK_SECONDS": "0.5"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "assemble", str(stage), str(data), "--background", str(log)],
                          env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0
    pid = int(re.search(r"pid (\d+)", proc.stdout).group(1))
    try:
        assert os.getsid(pid) == pid                                # setsid: it outlives the device call
    except ProcessLookupError:
        pytest.fail("the background assemble ended before the unpacking could have")
    deadline = time.monotonic() + 10
    while "assemble: done" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert "cifar10: unpacked into" in text and "cifar100: unpacked into" in text and "assemble: done" in text


def fake_manifest(sizes_mib: dict[str, list[float]], mnist_mib: float) -> dict:
    packs = [{"name": name, "file": f"{name}.npz", "md5": "0" * 32, "size": int(sum(parts) * MIB),
              "parts": [{"path": f"parts/{name}.npz.part{i}", "size": int(s * MIB), "md5": "0" * 32}
                        for i, s in enumerate(parts)]}
             for name, parts in sizes_mib.items()]
    return {"packs": packs, "mnist": {"size": int(mnist_mib * MIB), "files": []}, "manifest_bytes": 8192,
            "cifarpack": {"size": 7238}}


def staged_manifest(pack_mib: dict[str, float], mnist_mib: float, tree: int) -> dict:
    """The manifest `stage` would write for packs and MNIST of these sizes beside a working tree of `tree` bytes."""
    small = 8192 + 7238
    items = [(name, int(mnist_mib * MIB), False) if name == "mnist" else (name, int(pack_mib[name] * MIB), True)
             for name in gpu_data.TRAVEL]
    cuts = gpu_data.cut_parts(items, gpu_data.call_room(tree, 4, None) - small, None)
    return fake_manifest({name: [size / MIB for size in cuts[name]] for name in gpu_data.PACKS}, mnist_mib)


def test_the_plan_of_the_real_sizes():
    """The packs of ../shared/data cut to fill each call: four calls, CIFAR-10 and MNIST unpacked from call 2 on."""
    tree = int(3.6 * MIB)
    plan = gpu_data.make_plan(staged_manifest({"cifar10": 94.96, "cifar100": 96.15}, 11.06, tree), ".device",
                              tree=tree, margin_mib=4)
    calls = plan["calls"]
    assert [c["carry"][2:] for c in calls] == [
        [".device/parts/cifar10.npz.part0"],
        [".device/parts/cifar10.npz.part1", ".device/MNIST", ".device/parts/cifar100.npz.part0"],
        [".device/parts/cifar100.npz.part1"], [".device/parts/cifar100.npz.part2"]]
    assert all(c["carry"][:2] == [".device/manifest.json", ".device/cifarpack.py"] for c in calls)
    assert all(c["total_bytes"] <= 60 * MIB and len(c["carry"]) <= 8 for c in calls)
    assert all(c["total_bytes"] > 60 * MIB - 16 for c in calls[:3])          # filled to the byte (int rounding)
    assert [c["completes"] for c in calls] == [[], ["cifar10", "mnist"], [], ["cifar100"]]
    assert "--background" in calls[1]["command"] and "--background" not in calls[0]["command"] + calls[2]["command"]
    assert calls[-1]["command"] == "bash bench/gpu_lab.sh $OUT" and calls[-1]["timeout_s"] == 600
    text = gpu_data.plan_text(plan)
    assert all(f"timeout_s {call['timeout_s']}" in text for call in calls)


def test_an_earlier_lease_s_weights_travel_last(shared, tmp_path, capsys):
    """Files put in STAGE/earlier/ (bench/earlier_runs.py's parts) join the plan after the packs."""
    tree = int(3.6 * MIB)
    manifest = staged_manifest({"cifar10": 94.96, "cifar100": 96.15}, 11.06, tree)
    manifest["earlier"] = [{"path": f"earlier/weights-ex1.3-rescnn6-seed0.part{i}", "size": size}
                           for i, size in enumerate((15 * MIB, 8 * MIB))]
    calls = gpu_data.make_plan(manifest, ".device", tree=tree, margin_mib=4)["calls"]
    # With a 3.6 MiB working tree a width-128 rescnn6's 23 MiB still fit the fourth call (33 MiB of CIFAR-100).
    assert len(calls) == 4 and calls[-1]["command"] == "bash bench/gpu_lab.sh $OUT"
    assert calls[-1]["carry"][-2:] == [f".device/earlier/weights-ex1.3-rescnn6-seed0.part{i}" for i in (0, 1)]
    assert calls[-1]["completes"] == ["cifar100", "earlier weights"]
    assert all(c["total_bytes"] <= 60 * MIB for c in calls)
    stage, returned = tmp_path / "stage", tmp_path / "returned"   # returned: what the lease brought back
    (stage / "earlier").mkdir(parents=True)
    (stage / "earlier" / "weights-ex1.3-rescnn6-seed1.part0").write_bytes(b"another lease's")
    returned.mkdir()
    (returned / "weights-ex1.3-rescnn6-seed0.part0").write_bytes(b"w" * 500)
    (returned / "log.txt").write_text("not weights\n")
    args = ["stage", "--out", str(stage), "--shared", str(shared), "--part-mib", str(4000 / MIB)]
    assert gpu_data.main([*args, "--earlier", str(tmp_path / "shared")]) == 1   # no parts there: one line
    assert capsys.readouterr().err.startswith("error: --earlier ")
    assert gpu_data.main([*args, "--earlier", str(returned)]) == 0
    assert "1 file(s) of an earlier lease's weights" in capsys.readouterr().out
    assert [p.name for p in (stage / "earlier").iterdir()] == ["weights-ex1.3-rescnn6-seed0.part0"]
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["earlier"] == [{"path": "earlier/weights-ex1.3-rescnn6-seed0.part0", "size": 500}]
    assert manifest["plan"]["calls"][-1]["carry"][-1] == f"{stage}/earlier/weights-ex1.3-rescnn6-seed0.part0"


def test_filled_calls_are_the_fewest_as_the_tree_grows():
    sizes = ({"cifar10": 94.96, "cifar100": 96.15}, 11.06)
    counts = {}
    for tree_mib in (0.5, 3.6, 6.5, 9.5, 12):
        tree = int(tree_mib * MIB)
        plan = gpu_data.make_plan(staged_manifest(*sizes, tree), ".device", tree=tree, margin_mib=4)
        data = sum(c["data_bytes"] for c in plan["calls"])
        assert len(plan["calls"]) == -(-data // plan["room_bytes"])   # no call more than the bytes need
        counts[tree_mib] = len(plan["calls"])
    assert counts == {0.5: 4, 3.6: 4, 6.5: 4, 9.5: 5, 12: 5}


def test_a_part_too_large_for_a_call_is_refused():
    with pytest.raises(gpu_data.Refused, match="smaller --part-mib"):
        gpu_data.make_plan(fake_manifest({"cifar10": [62, 33], "cifar100": [40]}, 11), ".device",
                           tree=int(1.7 * MIB), margin_mib=4)
    with pytest.raises(gpu_data.Refused, match="does not fit one call"):
        gpu_data.fill_calls([("mnist", 70 * MIB, False)], 56 * MIB, 64 * MIB)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "cifar-lossless").is_dir(), reason="no ../shared/data")
def test_the_header_plan_fits_todays_packs_and_tree():
    """The plan in gpu_lab.sh's header, recomputed from the sizes of the real packs and today's working tree."""
    shared = ROOT.parent / "shared" / "data"
    tree = gpu_data.tree_bytes(ROOT)
    manifest = staged_manifest({name: (shared / "cifar-lossless" / f"{name}.npz").stat().st_size / MIB
                                for name in gpu_data.PACKS},
                               sum((shared / "MNIST" / "raw" / n).stat().st_size for n in gpu_data.MNIST_FILES) / MIB,
                               tree)
    plan = gpu_data.make_plan(manifest, ".device", tree, margin_mib=4)
    header = (ROOT / "bench" / "gpu_lab.sh").read_text()
    stale = "bench/gpu_lab.sh's header is out of date: run `python bench/gpu_data.py stage` and copy its plan there"
    assert len(plan["calls"]) == 4, stale
    for call in plan["calls"]:
        assert f"carry {json.dumps(call['carry'])}" in header, stale
