"""Hostile and broken checkpoint files end in CheckpointError: never code execution, a crash, unbounded
memory or a hang. Property tests mutate valid files at random; hand-built pickles carry payloads."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

import mpt_ref
from mpt_ref.io.checkpoint import parse_safetensors
from mpt_ref.io.torch_pickle import read_torch_checkpoint

VALID_ST = save({"prompt_embeddings": np.arange(12, dtype=np.float32).reshape(3, 4),
                 "prefix_task_cols": np.ones((2, 3, 1), np.float32)}, metadata={"format": "pt"})


def pickle_of_tensor_dict() -> bytes:
    """A hand-written torch-style data.pkl: {"w": _rebuild_tensor_v2(storage '0' of 4 floats, 0, (2, 2), (2, 1))}."""
    return (b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(("
            b"X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
            b"K\x00K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtRs.")


def torch_zip(pkl: bytes, storages: dict[str, bytes] | None = None, root: str = "archive",
              extra: dict[str, bytes] | None = None, *, version: bytes | None = b"3\n",
              compression: int = zipfile.ZIP_STORED) -> bytes:
    """A torch zip checkpoint as torch.save writes it; ``version=None`` leaves the version record out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        zf.writestr(f"{root}/data.pkl", pkl)
        zf.writestr(f"{root}/byteorder", b"little")
        if version is not None:
            zf.writestr(f"{root}/version", version)
        for key, data in (storages if storages is not None else {"0": struct.pack("<4f", 1, 2, 3, 4)}).items():
            zf.writestr(f"{root}/data/{key}", data)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


VALID_ZIP = torch_zip(pickle_of_tensor_dict())
POISON_PKL = b"\x80\x02ctorch\nFloatStorage\n}X\x04\x00\x00\x00nameX\x0f\x00\x00\x00BFloat16Storagesb0}."
DOUBLING_PKL = (b"\x80\x02(K\x01lq\x00" + b"".join(b"0(h%ch%clq%c" % (i - 1, i - 1, i) for i in range(1, 60))
                + b"Q.")  # 59 levels, each a list holding the previous level twice: str() doubles per level


def write(tmp: Path, data: bytes, name: str = "adapter_model.bin") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def test_the_hand_written_torch_zip_is_valid(tmp_path):
    got = read_torch_checkpoint(write(tmp_path, VALID_ZIP))
    np.testing.assert_array_equal(got["w"], np.array([[1, 2], [3, 4]], np.float32))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_safetensors_never_escape_checkpoint_error(data):
    blob = bytearray(VALID_ST)
    kind = data.draw(st.sampled_from(["truncate", "flip", "header_len", "splice"]), label="mutation")
    if kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            i = data.draw(st.integers(0, len(blob) - 1), label="at")
            blob[i] ^= data.draw(st.integers(1, 255), label="xor")
    elif kind == "header_len":
        blob[:8] = data.draw(st.integers(0, 2**64 - 1), label="n").to_bytes(8, "little")
    else:
        i = data.draw(st.integers(8, len(blob)), label="at")
        blob[i:i] = data.draw(st.binary(max_size=64), label="junk")
    try:
        tensors, _ = parse_safetensors(bytes(blob))
    except mpt_ref.CheckpointError:
        return
    assert all(isinstance(v, np.ndarray) for v in tensors.values())  # still valid: a well-formed result


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_torch_zips_never_escape_checkpoint_error(tmp_path, data):
    blob = bytearray(VALID_ZIP)
    for _ in range(data.draw(st.integers(1, 6), label="flips")):
        i = data.draw(st.integers(0, len(blob) - 1), label="at")
        blob[i] ^= data.draw(st.integers(1, 255), label="xor")
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob)), label="cut")]
    try:
        got = read_torch_checkpoint(write(tmp_path, bytes(blob)))
    except mpt_ref.CheckpointError:
        return
    assert all(isinstance(v, np.ndarray) for v in got.values())


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
@example(POISON_PKL)     # regression: poisoned every later load
@example(DOUBLING_PKL)   # regression: hung the loader (9 GB)
@example(b"\x80\x02}K\x01K\x02s.")  # a non-str key
def test_random_pickles_in_a_valid_archive(tmp_path, pkl):
    try:
        read_torch_checkpoint(write(tmp_path, torch_zip(pkl), "hostile.bin"))
    except mpt_ref.CheckpointError:
        pass
    got = read_torch_checkpoint(write(tmp_path, VALID_ZIP))  # the canary: a legitimate load still reads right
    np.testing.assert_array_equal(got["w"], np.array([[1, 2], [3, 4]], np.float32))


PAYLOADS = {
    "os.system": ("os", "system"),
    "posix.system": ("posix", "system"),
    "builtins.eval": ("builtins", "eval"),
    "builtins.exec": ("builtins", "exec"),
    "subprocess.Popen": ("subprocess", "Popen"),
    "torch.load": ("torch", "load"),
    "numpy frombuffer": ("numpy", "frombuffer"),
    "torch._utils._rebuild_from_type_v2": ("torch._utils", "_rebuild_from_type_v2"),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_pickles_calling_arbitrary_globals_are_refused_before_any_call(tmp_path, name):
    module, attr = PAYLOADS[name]
    sentinel = tmp_path / "pwned"
    arg = f"open({str(sentinel)!r}, 'w').write('x')" if "eval" in attr or "exec" in attr else f"touch {sentinel}"
    arg_bytes = arg.encode()
    pkl = (b"\x80\x02c" + module.encode() + b"\n" + attr.encode() + b"\nX" + struct.pack("<I", len(arg_bytes))
           + arg_bytes + b"\x85R.")
    with pytest.raises(mpt_ref.CheckpointError, match=f"{module}.{attr}.*refused"):
        read_torch_checkpoint(write(tmp_path, torch_zip(pkl)))
    assert not sentinel.exists()


def test_payload_inside_an_otherwise_valid_tensor_dict_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    evil = b"cos\nsystem\nX" + struct.pack("<I", len(f"touch {sentinel}")) + f"touch {sentinel}".encode() + b"\x85R"
    pkl = pickle_of_tensor_dict()[:-2] + b"X\x01\x00\x00\x00e" + evil + b"s."  # {..., "e": os.system(...)}
    with pytest.raises(mpt_ref.CheckpointError, match="os.system"):
        read_torch_checkpoint(write(tmp_path, torch_zip(pkl)))
    assert not sentinel.exists()


@pytest.mark.parametrize(
    "archive, match",
    [
        (torch_zip(pickle_of_tensor_dict(), root="../evil"), "relative archive member"),
        (torch_zip(pickle_of_tensor_dict(), extra={"/etc/passwd": b"x"}), "relative archive member"),
        (torch_zip(pickle_of_tensor_dict(), extra={"other/data.pkl": b"x"}), "one top-level folder"),
        (torch_zip(pickle_of_tensor_dict(), storages={}), "data/0"),
        (torch_zip(pickle_of_tensor_dict(), storages={"0": b"\0" * 8}), "8 bytes"),
        (torch_zip(pickle_of_tensor_dict().replace(b"K\x02K\x01\x86", b"K\x03K\x01\x86")), "reads past"),
        (torch_zip(pickle_of_tensor_dict().replace(b"cpuK\x04", b"cpuK\x00")), "declares 16 bytes"),
        (torch_zip(b"\x80\x02]q\x00."), "dict of str -> tensor"),
    ],
    ids=["dotdot-root", "absolute-member", "two-roots", "missing-storage", "short-storage", "stride-past-end",
         "numel-lie", "not-a-dict"],
)
def test_structural_tricks_are_refused(tmp_path, archive, match):
    with pytest.raises(mpt_ref.CheckpointError, match=match):
        read_torch_checkpoint(write(tmp_path, archive))


def test_zip_bomb_is_refused_without_inflating_it(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle_of_tensor_dict())
        zf.writestr("archive/data/0", b"\0" * (64 << 20))  # 64 MiB of zeros, ~64 KiB compressed
    path = write(tmp_path, buf.getvalue())
    assert path.stat().st_size < 1 << 20
    with pytest.raises(mpt_ref.CheckpointError, match="uncompressed"):
        read_torch_checkpoint(path, max_bytes=8 << 20)



# -- regression tests, each failed before the fix -------------------------------------------------------



def test_a_hostile_pickle_cannot_poison_later_loads(tmp_path):
    """Regression: BUILD on the shared FloatStorage stand-in renamed it BFloat16Storage for every later load."""
    with pytest.raises(mpt_ref.CheckpointError, match="BUILD"):
        read_torch_checkpoint(write(tmp_path, torch_zip(POISON_PKL), "evil.bin"))
    got = read_torch_checkpoint(write(tmp_path, VALID_ZIP))
    np.testing.assert_array_equal(got["w"], np.array([[1, 2], [3, 4]], np.float32))


@pytest.mark.parametrize("where", ["persistent id", "offset", "size", "dict key"])
def test_exponential_structures_fail_fast_with_bounded_messages(tmp_path, where):
    """Regression: a 659-byte pickle hung the loader (9 GB) because an error message called str() on it."""
    nested = DOUBLING_PKL[2:-2]  # leaves the 59-level structure on the stack
    if where == "persistent id":
        pkl = b"\x80\x02" + nested + b"Q."
    else:
        good = pickle_of_tensor_dict()
        if where == "offset":
            pkl = good.replace(b"tQK\x00", b"tQ" + nested, 1)
        elif where == "size":
            pkl = good.replace(b"K\x02K\x02\x86", nested + b"K\x02\x86", 1)
        else:
            pkl = b"\x80\x02}" + nested + b"K\x00s."
    with pytest.raises(mpt_ref.CheckpointError) as info:
        read_torch_checkpoint(write(tmp_path, torch_zip(pkl)))
    assert len(str(info.value)) < 1000


def test_tensors_with_more_elements_than_their_storage_are_refused(tmp_path):
    """Regression: a 2.6 KB file with stride 0 made the loader allocate 8192 x 8192 floats."""
    pkl = pickle_of_tensor_dict().replace(b"K\x02K\x02\x86K\x02K\x01\x86", b"M\x00 M\x00 \x86K\x00K\x00\x86")
    with pytest.raises(mpt_ref.CheckpointError, match="at most the 4 elements"):
        read_torch_checkpoint(write(tmp_path, torch_zip(pkl)))
    good = pickle_of_tensor_dict()
    body = good[len(b"\x80\x02}q\x00"):-2]  # 'w': tensor
    shared = good[:-1] + body.replace(b"X\x01\x00\x00\x00w", b"X\x01\x00\x00\x00v") + b"s."  # 'v' shares its storage
    with pytest.raises(mpt_ref.CheckpointError, match="shared storages"):
        read_torch_checkpoint(write(tmp_path, torch_zip(shared)))


def test_duplicate_member_names_are_refused(tmp_path):
    """Regression: mpt-ref read the last data.pkl, torch the first: different tensors from one file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_of_tensor_dict())
        zf.writestr("archive/version", b"3\n")
        zf.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
        with pytest.warns(UserWarning, match="Duplicate"):
            zf.writestr("archive/data/0", struct.pack("<4f", 5, 6, 7, 8))
    with pytest.raises(mpt_ref.CheckpointError, match="unique archive member names"):
        read_torch_checkpoint(write(tmp_path, buf.getvalue()))


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_compressed_members_are_refused_before_decompression(tmp_path, method):
    with pytest.raises(mpt_ref.CheckpointError, match="stored"):
        read_torch_checkpoint(write(tmp_path, torch_zip(pickle_of_tensor_dict(), compression=method)))


def test_encrypted_members_are_refused(tmp_path):
    blob = bytearray(VALID_ZIP)
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # set the encryption flag bit in every header
        at = 0
        while (at := blob.find(sig, at)) != -1:
            blob[at + (6 if sig == b"PK\x03\x04" else 8)] |= 1
            at += 4
    with pytest.raises(mpt_ref.CheckpointError, match="unencrypted"):
        read_torch_checkpoint(write(tmp_path, bytes(blob)))


def test_a_missing_version_record_is_refused_as_torch_does(tmp_path):
    with pytest.raises(mpt_ref.CheckpointError, match="version"):
        read_torch_checkpoint(write(tmp_path, torch_zip(pickle_of_tensor_dict(), version=None)))


@pytest.mark.parametrize("pkl, match", [
    (b"\x80\x02ccollections\nOrderedDict\n]\x85R.", "without arguments"),          # OrderedDict(list): hashing
    (b"\x80\x02ccollections\nOrderedDict\n)\x81K\x01b.", "attribute dict"),        # BUILD with a non-dict state
    (b"\x80\x02ctorch\nFloatStorage\n)\x81.", "NEWOBJ"),                           # NEWOBJ on a stand-in
    (b"\x80\x02}K\x01K\x02s.", "str dict keys"),
    (b"\x80\x02]K\x01\x8f.", "EMPTY_SET"),                                          # opcode outside the table
    (b"\x80\x02" + b"]" * 100000 + b"a" * 99999 + b".", "dict of str"),            # deep nesting: no RecursionError
    (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "UnicodeDecodeError"),
    (b"\x80\x02K", "unreadable"),
], ids=["ordereddict-args", "build-state", "newobj-stand-in", "int-key", "set-opcode", "deep", "unicode",
        "truncated"])
def test_narrowed_pickle_opcodes(tmp_path, pkl, match):
    with pytest.raises(mpt_ref.CheckpointError, match=match):
        read_torch_checkpoint(write(tmp_path, torch_zip(pkl)))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
@pytest.mark.parametrize("name", ["adapter_model.bin", "adapter_model.safetensors", "adapter_config.json"])
def test_non_regular_inputs_are_refused_before_reading(tmp_path, kind, name):
    """Regression: a FIFO checkpoint/config hung the loader; a symlink to /dev/zero read 9.2 GiB."""
    import os

    from mpt_ref.interop.adapter import load_peft_adapter

    d = tmp_path / "adapter"
    mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, token_dim=3)).save_pretrained(d)
    if name == "adapter_model.bin":
        (d / "adapter_model.safetensors").unlink()
    target = d / name
    target.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev-zero":
        target.symlink_to("/dev/zero")
    else:
        target.mkdir()
    with pytest.raises(mpt_ref.MptRefError, match="regular|neither|directory"):
        load_peft_adapter(d)


def test_safetensors_reads_exactly_the_file_size_under_a_memory_cap(tmp_path):
    """Regression: every read asked for max_bytes + 1 (8 GiB) up front: MemoryError under ulimit -v."""
    import subprocess
    import sys

    path = tmp_path / "a.safetensors"
    path.write_bytes(VALID_ST)
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30));"
            "from mpt_ref.io.checkpoint import read_tensors; import sys;"
            f"print(sorted(read_tensors({str(path)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "prompt_embeddings" in out.stdout


def _central(blob: bytearray, name: bytes) -> int:
    at = 0
    while (at := blob.find(b"PK\x01\x02", at)) != -1:
        n = struct.unpack_from("<H", blob, at + 28)[0]
        if blob[at + 46 : at + 46 + n] == name:
            return at
        at += 4
    raise AssertionError(name)


def _zip_with_extra(extra: bytes) -> bytearray:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_of_tensor_dict())
        zf.writestr("archive/version", b"3\n")
        info = zipfile.ZipInfo("archive/data/0")
        info.extra = extra
        zf.writestr(info, struct.pack("<4f", 1, 2, 3, 4))
    return bytearray(buf.getvalue())


def test_zip_structure_torch_reads_differently_is_refused(tmp_path):
    """Regression, found by the differential fuzz: two zip corruptions that Python's zipfile tolerates while
    torch's reader (miniz) reads other bytes as the storage: different tensors from one file."""
    blob = bytearray(VALID_ZIP)
    blob[_central(blob, b"archive/data/0") + 38] |= 0x10  # the DOS directory attribute
    with pytest.raises(mpt_ref.CheckpointError, match="directory"):
        read_torch_checkpoint(write(tmp_path, bytes(blob)))
    good = _zip_with_extra(b"FB\x02\x00ZZ")
    np.testing.assert_array_equal(read_torch_checkpoint(write(tmp_path, bytes(good)))["w"], [[1, 2], [3, 4]])
    bad = bytearray(good)
    local = bad.find(b"FB\x02\x00ZZ")  # the local header's copy comes first; the central one stays valid
    bad[local + 2] = 0xE1
    with pytest.raises(mpt_ref.CheckpointError, match="extra field"):
        read_torch_checkpoint(write(tmp_path, bytes(bad)))


@pytest.mark.parametrize("member, data, match", [
    ("archive/.storage_alignment", b"ZZ", "storage_alignment"),
    ("archive/.data/serialization_id", b"\xff\xfe", "serialization_id"),
    ("archive/version", b"0\n", "format version"),
], ids=["alignment", "serialization-id", "version-0"])
def test_records_torch_parses_are_checked(tmp_path, member, data, match):
    record = {"version": data} if member == "archive/version" else {"extra": {member: data}}
    archive = torch_zip(pickle_of_tensor_dict(), **record)
    with pytest.raises(mpt_ref.CheckpointError, match=match):
        read_torch_checkpoint(write(tmp_path, archive))


def many_tensors(count: int, name: str = "t{}") -> bytes:
    """A safetensors file of a (3, 4) ``prompt_embeddings`` and ``count`` empty tensors (~60 bytes each)."""
    import json

    header = {"prompt_embeddings": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}
    header.update({name.format(i): {"dtype": "F32", "shape": [0], "data_offsets": [48, 48]} for i in range(count)})
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(48)


PEAK_RSS = """
import resource, sys, warnings
warnings.simplefilter("ignore")
import mpt_ref
from mpt_ref.cli import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "adapter":
    try:
        mpt_ref.load_peft_adapter(sys.argv[2])
        print("loaded")
    except mpt_ref.CheckpointError as exc:
        print("refused:", exc)
else:
    print("exit", main(["verify", "--candidate", sys.argv[2], "--forward-only"]))
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("reader", ["adapter", "candidate"])
def test_a_file_of_many_empty_tensors_is_refused_from_its_header(tmp_path, reader):
    """Before: 10**6 empty tensors (60 MB) peaked at 2.4 GB in load_peft_adapter and verify --candidate.
    The count is checked from the header's bytes before the library builds one object per tensor."""
    import subprocess
    import sys

    from mpt_ref.conformance.location import default_vectors_dir
    from mpt_ref.conformance.verify import selected_cases
    from mpt_ref.io.checkpoint import MAX_TENSORS

    data = many_tensors(2 * MAX_TENSORS)  # 8 MB
    if reader == "adapter":
        target = tmp_path / "adapter"
        target.mkdir()
        (target / "adapter_model.safetensors").write_bytes(data)
        mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=4).save_pretrained(target)
    else:
        target = tmp_path / "candidate"
        first = selected_cases(default_vectors_dir())[0]  # the first case judged: its file ends the run
        (target / first).mkdir(parents=True)
        (target / first / "output.safetensors").write_bytes(data)
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, reader, str(target)], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert ("refused:" in out.stdout and "tensors" in out.stdout) if reader == "adapter" else "exit 2" in out.stdout
    grew = int(out.stdout.split("grew_mb")[1])
    assert grew < 150, out.stdout  # before: about 300 MB for this file


def test_braces_inside_tensor_names_do_not_count_as_tensors():
    names = "{" * 40 + "name{}" + "}" * 40
    tensors = parse_safetensors(many_tensors(2000, names))[0]  # 164,000 braces, all inside strings
    assert len(tensors) == 2001


# -- vectors folders (--vectors): index.json paths confined, case sizes checked before the reference runs --

def vectors_copy(tmp: Path) -> tuple[Path, dict]:
    import json

    from mpt_ref.conformance import vectors as vec
    from mpt_ref.conformance.cases import CASES

    out = vec.write_vectors(tmp / "v", CASES[:1])
    return out, json.loads((out / "index.json").read_text())


def rewrite_index(folder: Path, index: dict) -> None:
    import json

    (folder / "index.json").write_text(json.dumps(index))


def verify_vectors(capsys, folder: Path, candidate: Path) -> str:
    from mpt_ref.cli import main

    candidate.mkdir(exist_ok=True)
    (candidate / "pt_basic").mkdir(exist_ok=True)
    rc = main(["verify", "--candidate", str(candidate), "--vectors", str(folder), "--forward-only"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "internal error" not in err, (rc, err)
    return err


@pytest.mark.parametrize("where", ["case path", "file name", "case name"])
def test_vectors_index_paths_stay_inside_the_folder(tmp_path, capsys, where):
    """Before: a --vectors index.json path opened a file outside the vectors folder."""
    import shutil

    folder, index = vectors_copy(tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(folder / "pt_basic", outside)  # same bytes, same sha256: only confinement refuses it
    entry = index["cases"]["pt_basic"]
    if where == "case path":
        entry["path"] = "../outside"
    elif where == "file name":
        entry["files"] = {("../../outside/" + k if k == "case.json" else k): v for k, v in entry["files"].items()}
    else:
        index["cases"] = {"../outside": entry}
    rewrite_index(folder, index)
    assert "inside" in verify_vectors(capsys, folder, tmp_path / "cand")


@pytest.mark.parametrize("entry", [[], {"path": "pt_basic"}, {"path": "pt_basic", "files": []},
                                   {"path": "pt_basic", "files": {"case.json": 3}}, {"path": 7, "files": {}}])
def test_malformed_vectors_index_entries_exit_2(tmp_path, capsys, entry):
    """Before: a malformed --vectors index.json raised AttributeError/KeyError (exit 3)."""
    folder, index = vectors_copy(tmp_path)
    index["cases"]["pt_basic"] = entry
    rewrite_index(folder, index)
    verify_vectors(capsys, folder, tmp_path / "cand")


def test_a_vectors_case_of_huge_indices_is_refused_before_the_reference_allocates(tmp_path, capsys):
    """Before: 8 MB of indices in a hostile case made the reference allocate 30.5 GiB."""
    import hashlib
    import tracemalloc

    from safetensors.numpy import load, save

    folder, index = vectors_copy(tmp_path)
    case = folder / "pt_basic"
    params = load((case / "params.safetensors").read_bytes())
    params["embedding.weight"] = np.zeros((4, 4096), np.float64)
    inputs = load((case / "inputs.safetensors").read_bytes())
    inputs["indices"] = np.zeros((1000, 1000), np.int64)  # 8 MB; the output would be 1000 x 1000 x 4096
    for name, tensors in (("params", params), ("inputs", inputs)):
        data = save(tensors)
        (case / f"{name}.safetensors").write_bytes(data)
        index["cases"]["pt_basic"]["files"][f"{name}.safetensors"] = hashlib.sha256(data).hexdigest()
    rewrite_index(folder, index)
    tracemalloc.start()
    err = verify_vectors(capsys, folder, tmp_path / "cand")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "output elements" in err and peak < 256 << 20


@pytest.mark.parametrize("header, braces", [
    (b'{"a{": {"b": "x\\"{"}, "c": "\\\\"} {', 3),   # escaped quotes and backslashes inside strings
    (b'{"k\\"{": 1}', 1),
    (b'{"a": "\\"\\"' + b"{" * 5, 6),                # an unterminated string: its braces counted (a bound)
])
def test_braces_outside_json_strings_are_counted_exactly(header, braces):
    from mpt_ref.io.checkpoint import _braces_outside_strings

    assert _braces_outside_strings(header) == braces


def test_counting_tensors_is_linear_on_an_unterminated_string_of_escaped_quotes():
    """A regex restarting at every quote of such a string would take quadratic time (hours at 4 MB)."""
    from mpt_ref.io.checkpoint import _braces_outside_strings

    header = b"{" * 70_000 + b'"' + b'\\"' * 2_000_000
    assert _braces_outside_strings(header) == 70_000


def test_a_vectors_index_of_too_many_cases_is_refused(tmp_path, capsys):
    from mpt_ref.conformance.vectors import MAX_CASES

    folder, index = vectors_copy(tmp_path)
    entry = index["cases"]["pt_basic"]
    index["cases"] = {f"c{i}": entry for i in range(MAX_CASES + 1)}  # all pointing at one valid case
    rewrite_index(folder, index)
    assert f"at most {MAX_CASES} cases" in verify_vectors(capsys, folder, tmp_path / "cand")
