#!/usr/bin/env python3
"""The exact datasets to the GPU machine in parts small enough for the device tool, and their unpacking there.

The device tool carries at most 64 MiB a call (the repo's working tree included), but the lossless CIFAR packs
are about 95 MiB each. `stage` (here) splits them into parts, copies MNIST's four .gz files and cifarpack.py beside
them, writes a manifest (every pack's and part's size and md5) and prints the carry plan: the device calls, each
with the exact `carry` paths, its size, the command it runs and its timeout_s. Files in STAGE/earlier/ (the
weights-*.part* files an earlier lease brought back, bench/earlier_runs.py) travel last, for bench/gpu_lab.sh's
RESLAB_GPU_EARLIER: `stage --earlier DIR` puts those of DIR there (and only those). `assemble` (there) joins the packs
whose parts have all arrived, checks their md5, unpacks them with the staged cifarpack.py and copies MNIST.

    python bench/gpu_data.py stage [--out .device] [--part-mib N] [--earlier DIR]   # here; prints the carry plan
    python bench/gpu_data.py plan [--out .device]                       # here; the plan of a staged folder again
    python bench/gpu_data.py status STAGE                               # there: which parts arrived (md5-checked)
    python bench/gpu_data.py assemble STAGE DATA_DIR [--pack NAME ...] [--background LOG]   # there

assemble: for each pack (cifar10, cifar100) whose parts are all present: join them into DATA_DIR, check the md5
against the manifest (a damaged or missing part is a one-line error), unpack with STAGE/cifarpack.py into DATA_DIR
(the official binary and python-pickle layouts), write the done marker DATA_DIR/.done-NAME.json and remove the
joined file; MNIST's files are md5-checked and copied into DATA_DIR/MNIST/raw. A pack whose marker matches the
manifest is skipped. A lock per pack (DATA_DIR/.lock-NAME) keeps two assemble processes from both unpacking one
pack: the second waits, then sees the marker. Without --pack: everything complete, and a pack still missing parts
is only noted; --pack NAME (cifar10, cifar100, mnist; repeatable): just those, and a missing part is an error.
--background LOG: start the same assemble in a process session of its own (setsid; it outlives the device call
that started it), its output in LOG, and return at once. Exit status 1 when anything failed.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
PACKS = ("cifar10", "cifar100")
# The travel order: CIFAR-10 first (ex1.3 needs it first), MNIST right after it (the benchmark and ex1/ex1.2 need
# it), then CIFAR-100 (ex2.1, which runs after ex1.3).
TRAVEL = ("cifar10", "mnist", "cifar100")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")
CALL_LIMIT_MIB = 64                       # the device tool's limit on what one call carries, working tree included
DEVICE_DATA = "/tmp/reslab-gpu-data"      # DATA_DIR on the GPU machine (bench/gpu_lab.sh reads it from there)
DEVICE_LOG = "/tmp/reslab-gpu-data.log"   # the background assemble's output there
CHUNK = 4 * MIB
MANIFEST_BYTES = 8192                     # an upper bound for manifest.json, which holds the plan too


class Refused(Exception):
    """A one-line error: damaged or missing parts, a failed unpack."""


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


# ------------------------------------------------------------------------------------------------ stage (here)

def split_pack(src: Path, parts_dir: Path, part_sizes: list[int]) -> dict[str, Any]:
    """Copy `src` into parts of the given sizes; its md5 and size, and each part's path, size and md5."""
    whole = hashlib.md5()
    parts = []
    with open(src, "rb") as f:
        for index, want in enumerate(part_sizes):
            path = parts_dir / f"{src.name}.part{index}"
            h, size = hashlib.md5(), 0
            with open(path, "wb") as out:
                while size < want:
                    block = f.read(min(CHUNK, want - size))
                    if not block:
                        raise Refused(f"{src} is shorter than it was a moment ago: stage again")
                    out.write(block)
                    h.update(block)
                    whole.update(block)
                    size += len(block)
            parts.append({"path": f"parts/{path.name}", "size": size, "md5": h.hexdigest()})
        if f.read(1):
            raise Refused(f"{src} grew while it was split: stage again")
    return {"name": src.stem, "file": src.name, "size": sum(p["size"] for p in parts), "md5": whole.hexdigest(),
            "parts": parts}


def fill_calls(items: list[tuple[str, int, bool]], room: int,
               part_max: int | None = None) -> list[list[tuple[str, int]]]:
    """The device calls for items (name, bytes, divisible) in travel order, each a list of (name, bytes) pieces:
    every call is filled to `room` bytes of data (and 8 carry paths, 2 of them manifest.json and cifarpack.py)
    before the next begins, a divisible item cut at the call's end (pieces of at most part_max), an indivisible
    one moved whole to the next call. The fewest calls; stage cuts the packs by it, make_plan finds the calls."""
    if part_max is not None and part_max < 1:
        raise Refused(f"parts of {part_max} bytes: --part-mib must be above 0")
    calls: list[list[tuple[str, int]]] = [[]]
    free = room
    for name, size, divisible in items:
        while size > 0:
            need = 1 if divisible else size
            if free < need or len(calls[-1]) >= 6:
                calls.append([])
                free = room
                if need > free:
                    raise Refused(f"{name} ({mib(size)}) does not fit one call ({mib(room)} of data beside the "
                                  "working tree): stage again with a smaller --part-mib")
            piece = min(size, free, part_max or size) if divisible else size
            calls[-1].append((name, piece))
            free -= piece
            size -= piece
    return [call for call in calls if call]


def cut_parts(items: list[tuple[str, int, bool]], room: int, part_max: int | None) -> dict[str, list[int]]:
    """Each divisible item's part sizes, cut where fill_calls ends a call."""
    calls = fill_calls(items, room, part_max)
    return {name: [piece for call in calls for n, piece in call if n == name]
            for name, _, divisible in items if divisible}


def tree_bytes(repo: Path) -> int:
    """What every device call carries besides the data: the repo's tracked and untracked-but-not-ignored files."""
    total = 0
    for args in (["ls-files", "-z"], ["ls-files", "-z", "--others", "--exclude-standard"]):
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout
        for name in filter(None, out.decode().split("\0")):
            path = repo / name
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


def call_room(tree: int, margin_mib: float, call_mib: float | None) -> int:
    """Bytes of data (manifest and cifarpack.py included) one call carries beside the working tree."""
    return int((call_mib if call_mib is not None else CALL_LIMIT_MIB - margin_mib) * MIB) - tree


def make_plan(manifest: dict[str, Any], stage_rel: str, tree: int, margin_mib: float,
              call_mib: float | None = None) -> dict[str, Any]:
    """The device calls: each carries the manifest, cifarpack.py and the next items (in travel order) that fit."""
    room = call_room(tree, margin_mib, call_mib)
    small = [f"{stage_rel}/manifest.json", f"{stage_rel}/cifarpack.py"]
    small_bytes = manifest["manifest_bytes"] + manifest["cifarpack"]["size"]
    items = []   # (carry path, bytes, what it completes or None)
    for name in TRAVEL:
        if name == "mnist":
            items.append((f"{stage_rel}/MNIST", manifest["mnist"]["size"], "mnist"))
            continue
        pack = next(p for p in manifest["packs"] if p["name"] == name)
        for i, part in enumerate(pack["parts"]):
            items.append((f"{stage_rel}/{part['path']}", part["size"],
                          pack["name"] if i == len(pack["parts"]) - 1 else None))
    earlier = manifest.get("earlier", [])   # an earlier lease's weights (bench/earlier_runs.py), needed last
    items += [(f"{stage_rel}/{f['path']}", f["size"], "earlier weights" if i == len(earlier) - 1 else None)
              for i, f in enumerate(earlier)]
    ends = {path: completes for path, _, completes in items if completes}
    calls = [{"carry": small + [path for path, _ in pieces], "data_bytes": small_bytes + sum(n for _, n in pieces),
              "completes": [ends[path] for path, _ in pieces if path in ends]}
             for pieces in fill_calls([(path, size, False) for path, size, _ in items], room - small_bytes)]
    for n, call in enumerate(calls, 1):
        call["call"] = n
        call["total_bytes"] = call["data_bytes"] + tree
        if n == len(calls):
            call["command"] = ("" if stage_rel == ".device" else f"RESLAB_STAGE={stage_rel} ") + \
                "bash bench/gpu_lab.sh $OUT"
            call["timeout_s"] = 600
        else:
            call["command"] = f"python3 bench/gpu_data.py status {stage_rel}"
            if call["completes"]:   # unpack what is complete while the next parts travel
                call["command"] += (f" && python3 bench/gpu_data.py assemble {stage_rel} {DEVICE_DATA} "
                                    f"--background {DEVICE_LOG}")
            call["timeout_s"] = 120
    return {"tree_bytes": tree, "room_bytes": room, "calls": calls}


def plan_text(plan: dict[str, Any]) -> str:
    calls = plan["calls"]
    lines = [f"Carry plan: {len(calls)} device calls, back to back. Each carries the working tree "
             f"({mib(plan['tree_bytes'])}, git's tracked and untracked-not-ignored files) and at most "
             f"{mib(plan['room_bytes'])} of data (the tool's {CALL_LIMIT_MIB} MiB, less a margin)."]
    for call in calls:
        done = f"; completes {', '.join(call['completes'])}" if call["completes"] else ""
        final = " (final)" if call["call"] == len(calls) else ""
        lines += [f"call {call['call']}{final}: {mib(call['data_bytes'])} data + tree = {mib(call['total_bytes'])}"
                  f"{done}; timeout_s {call['timeout_s']}",
                  f"  carry: {json.dumps(call['carry'])}",
                  f"  command: {call['command']}"]
        if final:
            lines.append("  (with under ~11 minutes of device time left before it, prefix the command with "
                         "RESLAB_GPU_DEADLINE=<budget_left_s - 120>; its default is 540)")
    lines += ["Make each call within ~30 s of the previous one's reply: a machine idle longer is given back, and with "
              "it the parts it received. A reply with warm: false after call 1 means the earlier parts are gone: "
              "start again at call 1. The status lines show which parts arrived (md5-checked); "
              f"{DEVICE_LOG} on the machine shows the background unpacking (bench/gpu_lab.sh prints it too)."]
    return "\n".join(lines)


def take_earlier(out: Path, source: Path) -> None:
    """Make STAGE/earlier/ hold the weights-*.part* files of `source` (an earlier lease's returned files) alone."""
    parts = sorted(source.glob("weights-*.part*")) if source.is_dir() else []
    if not parts:
        raise Refused(f"--earlier {source}: no weights-*.part* files there (the files an earlier lease returned)")
    shutil.rmtree(out / "earlier", ignore_errors=True)   # another lease's parts would travel for nothing
    (out / "earlier").mkdir(parents=True)
    for part in parts:
        shutil.copyfile(part, out / "earlier" / part.name)


def stage(out: Path, shared: Path, part_mib: float | None, margin_mib: float,
          call_mib: float | None, earlier_from: Path | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    if earlier_from is not None:
        take_earlier(out, earlier_from)
    part_max = int(part_mib * MIB) if part_mib is not None else None
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "parts", ignore_errors=True)   # parts of an earlier staging would travel for nothing
    (out / "parts").mkdir()
    sources = {name: shared / "cifar-lossless" / f"{name}.npz" for name in PACKS}
    mnist_files = [shared / "MNIST" / "raw" / name for name in MNIST_FILES]
    for src in [*sources.values(), shared / "cifar-lossless" / "cifarpack.py", *mnist_files]:
        if not src.is_file():
            raise Refused(f"no {src} (--shared names the folder holding cifar-lossless/ and MNIST/raw/)")
    tree = tree_bytes(ROOT)
    small_bytes = MANIFEST_BYTES + (shared / "cifar-lossless" / "cifarpack.py").stat().st_size
    mnist_bytes = sum(path.stat().st_size for path in mnist_files)
    earlier = [{"path": f"earlier/{path.name}", "size": path.stat().st_size}
               for path in sorted((out / "earlier").glob("*")) if path.is_file()]
    items = [(name, mnist_bytes, False) if name == "mnist" else (name, sources[name].stat().st_size, True)
             for name in TRAVEL] + [(f["path"], f["size"], False) for f in earlier]
    cuts = cut_parts(items, call_room(tree, margin_mib, call_mib) - small_bytes, part_max)
    packs = []
    for name in PACKS:
        packs.append(split_pack(sources[name], out / "parts", cuts[name]))
        print(f"{name}: {mib(packs[-1]['size'])} in {len(packs[-1]['parts'])} part(s), md5 {packs[-1]['md5']}")
    shutil.copyfile(shared / "cifar-lossless" / "cifarpack.py", out / "cifarpack.py")
    mnist_dir = out / "MNIST" / "raw"
    shutil.rmtree(out / "MNIST", ignore_errors=True)
    mnist_dir.mkdir(parents=True)
    mnist = []
    for name in MNIST_FILES:
        shutil.copyfile(shared / "MNIST" / "raw" / name, mnist_dir / name)
        mnist.append({"path": f"MNIST/raw/{name}", "size": (mnist_dir / name).stat().st_size,
                      "md5": md5_file(mnist_dir / name)})
    manifest: dict[str, Any] = {
        "format": 1, "staged": time.strftime("%Y-%m-%d %H:%M:%S"), "packs": packs,
        "mnist": {"files": mnist, "size": sum(f["size"] for f in mnist)},
        "cifarpack": {"path": "cifarpack.py", "size": (out / "cifarpack.py").stat().st_size,
                      "md5": md5_file(out / "cifarpack.py")},
        "earlier": earlier, "manifest_bytes": MANIFEST_BYTES}
    try:
        stage_rel = str(out.resolve().relative_to(ROOT))
    except ValueError:
        stage_rel = str(out)
    manifest["plan"] = make_plan(manifest, stage_rel, tree, margin_mib, call_mib)
    text = json.dumps(manifest, indent=1) + "\n"
    assert len(text) <= manifest["manifest_bytes"], "the plan counted too little for manifest.json"
    (out / "manifest.json").write_text(text)
    weights = f", {len(earlier)} file(s) of an earlier lease's weights from {out / 'earlier'}" if earlier else ""
    print(f"staged in {out} in {time.perf_counter() - start:.1f}s (MNIST {mib(manifest['mnist']['size'])}, "
          f"cifarpack.py, manifest.json{weights})\n")
    print(plan_text(manifest["plan"]))
    return manifest


# ------------------------------------------------------------------------------------------- assemble (there)

def read_manifest(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / "manifest.json"
    if not path.is_file():
        raise Refused(f"no {path}: carry the stage's manifest.json")
    return json.loads(path.read_text())


def part_state(stage_dir: Path, part: dict[str, Any]) -> str:
    """'ok', 'missing', or what is wrong with a part (size first: no md5 of a part still arriving)."""
    path = stage_dir / part["path"]
    if not path.is_file():
        return "missing"
    if path.stat().st_size != part["size"]:
        return f"has {path.stat().st_size} bytes, the manifest says {part['size']}"
    got = md5_file(path)
    return "ok" if got == part["md5"] else f"has md5 {got}, the manifest says {part['md5']}"


@contextlib.contextmanager
def locked(data_dir: Path, name: str) -> Iterator[None]:
    """One assemble at a time per pack: a second one waits here, then finds the first one's marker."""
    with open(data_dir / f".lock-{name}", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{name}: another assemble holds {data_dir / f'.lock-{name}'}; waiting for it", flush=True)
            t = time.perf_counter()
            fcntl.flock(f, fcntl.LOCK_EX)
            print(f"{name}: waited {time.perf_counter() - t:.1f}s", flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def done_marker(data_dir: Path, name: str, md5: str) -> dict[str, Any] | None:
    path = data_dir / f".done-{name}.json"
    if not path.is_file():
        return None
    marker = json.loads(path.read_text())
    return marker if marker.get("md5") == md5 else None


def load_cifarpack(stage_dir: Path) -> Any:
    spec = importlib.util.spec_from_file_location("reslab_staged_cifarpack", stage_dir / "cifarpack.py")
    if spec is None or spec.loader is None or not (stage_dir / "cifarpack.py").is_file():
        raise Refused(f"no {stage_dir / 'cifarpack.py'}: carry the stage's cifarpack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assemble_pack(stage_dir: Path, data_dir: Path, pack: dict[str, Any]) -> str:
    """Join, check, unpack one pack whose parts are all here; return what was done."""
    name = pack["name"]
    with locked(data_dir, name):
        marker = done_marker(data_dir, name, pack["md5"])
        if marker:
            return f"{name}: already unpacked ({marker['when']}), skipped"
        t0 = time.perf_counter()
        joined = data_dir / pack["file"]
        whole = hashlib.md5()
        with open(joined, "wb") as out:
            for part in pack["parts"]:
                h = hashlib.md5()
                with open(stage_dir / part["path"], "rb") as f:
                    for block in iter(lambda: f.read(CHUNK), b""):
                        out.write(block)
                        h.update(block)
                        whole.update(block)
                if h.hexdigest() != part["md5"]:
                    joined.unlink()
                    raise Refused(f"{name}: part {part['path']} has md5 {h.hexdigest()}, the manifest says "
                                  f"{part['md5']}: damaged in transit or from another staging; stage and carry again")
        if whole.hexdigest() != pack["md5"]:
            joined.unlink()
            raise Refused(f"{name}: joined parts have md5 {whole.hexdigest()}, the manifest says {pack['md5']}")
        t1 = time.perf_counter()
        print(f"{name}: {len(pack['parts'])} part(s) joined, {mib(pack['size'])}, md5 {pack['md5']} as in the "
              f"manifest ({t1 - t0:.1f}s); unpacking", flush=True)
        try:
            report = load_cifarpack(stage_dir).unpack(joined, data_dir)
        except (Exception, SystemExit) as exc:   # cifarpack stops with SystemExit on a written file's wrong md5
            raise Refused(f"{name}: unpacking failed: {type(exc).__name__}: {exc}") from exc
        finally:
            joined.unlink(missing_ok=True)
        for line in report:
            print(f"  {line}")
        t2 = time.perf_counter()
        record = {"name": name, "md5": pack["md5"], "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "join_seconds": round(t1 - t0, 2), "unpack_seconds": round(t2 - t1, 2), "files": len(report)}
        (data_dir / f".done-{name}.json").write_text(json.dumps(record) + "\n")
        return f"{name}: unpacked into {data_dir} in {t2 - t1:.1f}s ({len(report)} files; joined in {t1 - t0:.1f}s)"


def copy_mnist(stage_dir: Path, data_dir: Path, mnist: dict[str, Any]) -> str:
    t0 = time.perf_counter()
    with locked(data_dir, "mnist"):
        copied = 0
        for f in mnist["files"]:
            dest = data_dir / f["path"]
            if dest.is_file() and dest.stat().st_size == f["size"] and md5_file(dest) == f["md5"]:
                continue
            got = md5_file(stage_dir / f["path"])
            if got != f["md5"]:
                raise Refused(f"mnist: {f['path']} has md5 {got}, the manifest says {f['md5']}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stage_dir / f["path"], dest)
            copied += 1
    if not copied:
        return "mnist: already in place, skipped"
    return f"mnist: {copied} file(s) md5-checked and copied into {data_dir / 'MNIST/raw'} " \
           f"({time.perf_counter() - t0:.1f}s)"


def assemble(stage_dir: Path, data_dir: Path, only: list[str] | None) -> int:
    start = time.perf_counter()
    manifest = read_manifest(stage_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for pack in manifest["packs"]:
        if only and pack["name"] not in only:
            continue
        missing = [p["path"] for p in pack["parts"] if not (stage_dir / p["path"]).is_file()]
        if missing and not done_marker(data_dir, pack["name"], pack["md5"]):
            line = (f"{pack['name']}: {len(pack['parts']) - len(missing)} of {len(pack['parts'])} parts here "
                    f"(missing {', '.join(missing)})")
            if only:
                errors.append(line)
            else:
                print(f"{line}: not yet", flush=True)
            continue
        try:
            print(assemble_pack(stage_dir, data_dir, pack), flush=True)
        except Refused as exc:
            errors.append(str(exc))
    if not only or "mnist" in only:
        if all((stage_dir / f["path"]).is_file() for f in manifest["mnist"]["files"]):
            try:
                print(copy_mnist(stage_dir, data_dir, manifest["mnist"]), flush=True)
            except Refused as exc:
                errors.append(str(exc))
        elif only:
            errors.append("mnist: not all of MNIST/raw is here")
        else:
            print("mnist: not here yet", flush=True)
    for line in errors:
        print(f"error: {line}", file=sys.stderr, flush=True)
    print(f"assemble: {'failed' if errors else 'done'} in {time.perf_counter() - start:.1f}s", flush=True)
    return 1 if errors else 0


def background(argv: list[str], log: Path) -> int:
    """Start `gpu_data.py argv` in a session of its own (setsid), its output in `log`; it outlives this call."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"assembling in the background (pid {proc.pid}, a session of its own); its output: {log}")
    return 0


def status(stage_dir: Path) -> int:
    manifest = read_manifest(stage_dir)
    ok = True
    for pack in manifest["packs"]:
        states = [(p["path"], part_state(stage_dir, p)) for p in pack["parts"]]
        here = sum(state == "ok" for _, state in states)
        print(f"{pack['name']}: {here} of {len(states)} parts here" +
              "".join(f"; {path} {state}" for path, state in states if state not in ("ok", "missing")))
        ok &= all(state in ("ok", "missing") for _, state in states)
    mnist = sum((stage_dir / f["path"]).is_file() for f in manifest["mnist"]["files"])
    print(f"mnist: {mnist} of {len(manifest['mnist']['files'])} files here")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stage", help="split the packs, copy MNIST and cifarpack.py, print the carry plan (here)")
    p.add_argument("--out", default=str(ROOT / ".device"), help="stage folder (default .device, git-ignored)")
    p.add_argument("--part-mib", type=float,
                   help="largest part in MiB (default: parts cut so that each call is filled before the next)")
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="the shared data folder")
    p.add_argument("--margin-mib", type=float, default=4,
                   help="room left free in each call below the tool's 64 MiB (default 4)")
    p.add_argument("--call-mib", type=float, help="what one call may carry in all, instead of 64 - margin")
    p.add_argument("--earlier", metavar="DIR",
                   help="an earlier lease's returned files: its weights-*.part* replace STAGE/earlier/'s")
    p = sub.add_parser("plan", help="print the carry plan of a staged folder again")
    p.add_argument("--out", default=str(ROOT / ".device"))
    p = sub.add_parser("status", help="which parts and files are in a stage folder (there)")
    p.add_argument("stage")
    p = sub.add_parser("assemble", help="join, check and unpack what has arrived (there)")
    p.add_argument("stage")
    p.add_argument("data_dir")
    p.add_argument("--pack", action="append", choices=[*PACKS, "mnist"],
                   help="only this one (repeatable); its missing parts are then an error")
    p.add_argument("--background", metavar="LOG", help="run in a session of its own, output in LOG; return at once")
    args = parser.parse_args(argv)
    try:
        if args.command == "stage":
            stage(Path(args.out), Path(args.shared), args.part_mib, args.margin_mib, args.call_mib,
                  Path(args.earlier) if args.earlier else None)
            return 0
        if args.command == "plan":
            print(plan_text(read_manifest(Path(args.out))["plan"]))
            return 0
        if args.command == "status":
            return status(Path(args.stage))
        if args.background:
            rest = [args.stage, args.data_dir] + [a for name in args.pack or [] for a in ("--pack", name)]
            return background(["assemble", *rest], Path(args.background))
        return assemble(Path(args.stage), Path(args.data_dir), args.pack)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
