"""Differential fuzz worker: mutated safetensors and torch zip files read by mpt-ref and by the
reference parsers (the safetensors library; ``torch.load(weights_only=True, map_location="cpu")``).

Run by tests/test_differential_fuzz.py in a subprocess under a memory cap (RLIMIT_AS). After every hostile
file a legitimate file is loaded again and compared (the poisoning canary). Prints one JSON line: counts
per outcome class and up to 5 examples of each class that is not allowed.

Outcome classes (per file):
  accepted-same        both load it, same keys, shapes, dtypes (bf16 widened) and values
  refused-both         both refuse it
  refused-mpt-only     mpt-ref refuses what the reference accepts; the reason must be one spec/checkpoints.md
                       names (counted per reason)
  accepted-different   both load it, different tensors              (never allowed)
  accepted-mpt-only    mpt-ref loads what the reference refuses     (never allowed)
  escaped              mpt-ref raised something other than CheckpointError (never allowed)
  poisoned             the canary read back differently after a hostile file (never allowed)
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import re
import signal
import sys
import time
import warnings
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from mpt_ref.errors import CheckpointError
from mpt_ref.io.checkpoint import SAFETENSORS_DTYPES, parse_safetensors
from mpt_ref.io.torch_pickle import parse_torch_checkpoint

# mpt-ref's documented refusals of files the reference accepts (spec/checkpoints.md), by message
ALLOWED_REFUSALS = {
    "unsupported dtype": r"unsupported dtype",
    "only tensor-rebuilding globals": r"only tensor-rebuilding globals",
    "restricted opcodes": r"only tensor-dict opcodes",
    "not a dict of str -> tensor": r"dict of str -> tensor|str dict keys",
    "no views (stride 0, overlap, shared storages)": r"elements of (its|their) storage",
    "BUILD/NEWOBJ/REDUCE narrowed": r"BUILD|NEWOBJ|REDUCE|OrderedDict\(\)|attribute dict|SETITEM|APPEND",
    "archive member rules": r"unique archive member|stored \(uncompressed\)|unencrypted|one folder|one top-level|UTF-8 archive",
    "storage size exact": r"storage .* holds|declares",
    "tensor arguments": r"tensor: expected|parameter: expected|backward hooks|storage reference|"
                        r"\('storage', type, key, location, numel\) reference",
    "format version": r"format version",
    "little-endian": r"little-endian",
    "zip CRC-32, local names and versions checked": (r"Bad CRC-32|File name in directory .* and header .* differ|"
                                                     r"zip file version|Bad magic number for|no local header"),
    "UTF-8 everywhere (zip names)": r"UnicodeDecodeError",
    "zip structure checked more strictly than torch's reader": (r"well-formed zip archive|integer .storage_alignment|"
                                                                 r"span multiple disks|BadZipFile"),
}


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def reference_safetensors(data: bytes):
    from safetensors import deserialize

    out = {}
    for key, info in deserialize(data):
        if info["dtype"] not in SAFETENSORS_DTYPES:
            return ("unsupported", info["dtype"])
        arr = np.frombuffer(info["data"], dtype=SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[key] = arr
    return out


def reference_torch(data: bytes):
    import torch

    obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(obj, dict) or not all(isinstance(k, str) and type(v) in (torch.Tensor, torch.nn.Parameter)
                                            for k, v in obj.items()):
        return ("not-a-tensor-dict", type(obj).__name__)
    out = {}
    for k, v in obj.items():
        v = v.detach()
        if v.dtype == torch.bfloat16:
            v = v.float()
        try:
            out[k] = v.numpy().copy()
        except TypeError:
            return ("unsupported", str(v.dtype))
    return out


def same(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for k, v in a.items():
        x, y = np.asarray(v), np.asarray(b[k])
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.tobytes() != y.tobytes() and not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            return False
    return True


# -- seeds and mutations -------------------------------------------------------------------------------

def seeds_safetensors(rng: np.random.Generator) -> list[bytes]:
    from safetensors.numpy import save

    return [
        save({"prompt_embeddings": rng.standard_normal((3, 4)).astype(np.float32),
              "prefix_task_cols": rng.standard_normal((2, 3, 1)).astype(np.float32)}, metadata={"format": "pt"}),
        save({"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.zeros((0, 2), np.float16),
              "c": np.array(True)}),
        save({"w": rng.standard_normal((5,)).astype(np.float64)}, metadata={"x": "y"}),
    ]


def seeds_torch() -> list[bytes]:
    import torch

    torch.manual_seed(0)
    dicts = [
        {"prompt_embeddings": torch.randn(3, 4)},
        torch.nn.Linear(3, 2).state_dict(),  # OrderedDict with _metadata (BUILD)
        {"t": torch.randn(2, 3).t(), "v": torch.randn(4, 5, dtype=torch.float64)[1:, 2:4].clone()[1:]},
        {"bf": torch.randn(5, dtype=torch.bfloat16), "h": torch.randn(2, 2, dtype=torch.float16),
         "i": torch.arange(4, dtype=torch.int32), "b": torch.tensor([True, False]), "e": torch.zeros(0, 3)},
        {"p": torch.nn.Parameter(torch.ones(2))},
    ]
    out = []
    for d in dicts:
        buf = io.BytesIO()
        torch.save(d, buf)
        out.append(buf.getvalue())
    return out


def flip(blob: bytes, rnd: random.Random, n: int) -> bytes:
    b = bytearray(blob)
    for _ in range(n):
        if b:
            b[rnd.randrange(len(b))] ^= rnd.randrange(1, 256)
    return bytes(b)


INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"0", b"9", b"-1", b"1e9", b"[]", b"{}", b'"', b",", b"]", b"}"]
PICKLE_OPS = [b"b", b"\x81", b"R", b"(", b"t", b"0", b"2", b"s", b"u", b"a", b"e", b"}", b"]", b")", b"N", b"\x88",
              b"K\xff", b"M\xff\xff", b"J\xff\xff\xff\x7f", b"\x8a\x01\xff", b"h\x00", b"q\x00", b"\x94", b"Q", b".",
              b"ctorch\nFloatStorage\n", b"ctorch\nBFloat16Storage\n", b"ccollections\nOrderedDict\n",
              b"ctorch._utils\n_rebuild_tensor_v2\n", b"cbuiltins\nset\n", b"\x8f", b"\x90"]


def mutate_safetensors(seed: bytes, rnd: random.Random) -> bytes:
    n = int.from_bytes(seed[:8], "little")
    kind = rnd.choice(["flip", "flip-header", "truncate", "header-len", "splice-header", "append", "json"])
    if kind == "flip":
        return flip(seed, rnd, rnd.randint(1, 6))
    if kind == "flip-header":
        b = bytearray(seed)
        for _ in range(rnd.randint(1, 3)):
            b[8 + rnd.randrange(n)] = rnd.choice(INTERESTING)[0]
        return bytes(b)
    if kind == "truncate":
        return seed[: rnd.randrange(len(seed))]
    if kind == "header-len":
        return ((n + rnd.choice([-2, -1, 1, 2, 8])) % 2**64).to_bytes(8, "little") + seed[8:]
    if kind == "splice-header":
        at = 8 + rnd.randrange(n)
        return seed[:at] + rnd.choice(INTERESTING) + seed[at:]
    if kind == "append":
        return seed + bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
    header = json.loads(seed[8 : 8 + n])
    keys = [k for k in header if k != "__metadata__"]
    k = rnd.choice(keys)
    field = rnd.choice(["dtype", "shape", "data_offsets", "extra", "drop", "metadata"])
    if field == "dtype":
        header[k]["dtype"] = rnd.choice(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "C64", "U16", "x"])
    elif field == "shape":
        header[k]["shape"] = rnd.choice([[], [0], [1], [2, 2], [3, 4], [1, 1, 1, 12], [-1], [2**63], ["1"]])
    elif field == "data_offsets":
        a, b = header[k]["data_offsets"]
        header[k]["data_offsets"] = [a + rnd.choice([-4, 0, 4]), b + rnd.choice([-4, 0, 4])]
    elif field == "extra":
        header[k]["extra"] = 1
    elif field == "drop":
        del header[k]
    else:
        header["__metadata__"] = rnd.choice([{"a": 1}, {"a": "b"}, None, [], "x"])
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + seed[8 + n :]


def rezip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w", compression=compression) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return buf.getvalue()


def mutate_torch(seed: bytes, rnd: random.Random) -> bytes:
    zf = zipfile.ZipFile(io.BytesIO(seed))
    members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    kind = rnd.choices(["flip-zip", "pickle-flip", "pickle-insert", "pickle-truncate", "pickle-numbers",
                        "storage", "members"], weights=[1, 3, 3, 1, 3, 2, 2])[0]
    if kind == "flip-zip":
        return flip(seed, rnd, rnd.randint(1, 4))
    pkl_i = next(i for i, (n, _) in enumerate(members) if n.endswith("/data.pkl"))
    name, pkl = members[pkl_i]
    if kind == "pickle-flip":
        pkl = flip(pkl, rnd, rnd.randint(1, 3))
    elif kind == "pickle-insert":
        at = rnd.randrange(2, len(pkl))
        pkl = pkl[:at] + rnd.choice(PICKLE_OPS) + pkl[at:]
    elif kind == "pickle-truncate":
        pkl = pkl[: rnd.randrange(len(pkl))] + rnd.choice([b"", b"."])
    elif kind == "pickle-numbers":  # change one small int (K) argument: sizes, strides, offsets, numel
        spots = [m.start() for m in re.finditer(rb"K", pkl)]
        if spots:
            at = rnd.choice(spots)
            pkl = pkl[:at] + rnd.choice([b"K\x00", b"K\x01", b"K\x03", b"K\x08", b"M\x00\x20", b"J\x00\x00\x00\x40"]) \
                + pkl[at + 2:]
    members[pkl_i] = (name, pkl)
    if kind == "storage":
        data_i = [i for i, (n, _) in enumerate(members) if "/data/" in n and not n.endswith("serialization_id")]
        if data_i:
            i = rnd.choice(data_i)
            n, d = members[i]
            members[i] = (n, rnd.choice([d[:-1], d + b"\0", d[: len(d) // 2], b"", d * 2]))
    elif kind == "members":
        op = rnd.choice(["drop", "dup", "rename", "compress", "version", "byteorder", "reorder"])
        if op == "drop":
            members.pop(rnd.randrange(len(members)))
        elif op == "dup":
            i = rnd.randrange(len(members))
            members.append((members[i][0], members[rnd.randrange(len(members))][1]))
        elif op == "rename":
            i = rnd.randrange(len(members))
            members[i] = (rnd.choice(["other/data.pkl", "archive/x", members[i][0] + "x", "../a", "a"]), members[i][1])
        elif op == "compress":
            return rezip(members, zipfile.ZIP_DEFLATED)
        elif op == "version":
            members = [(n, rnd.choice([b"0\n", b"1\n", b"3", b"9\n", b"99\n", b"x\n", b""]) if n.endswith("/version")
                        else d) for n, d in members]
        elif op == "byteorder":
            members = [(n, rnd.choice([b"big", b"", b"little\n"]) if n.endswith("/byteorder") else d)
                       for n, d in members]
        else:
            rnd.shuffle(members)
    return rezip(members)


# -- the loop --------------------------------------------------------------------------------------------

def run(seconds: float, seed: int, max_files: int) -> dict:
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    st_seeds = seeds_safetensors(rng)
    pt_seeds = seeds_torch()
    canary_st, canary_pt = st_seeds[0], pt_seeds[0]
    want_st, want_pt = parse_safetensors(canary_st)[0], parse_torch_checkpoint(canary_pt)
    counts: dict[str, collections.Counter] = {"safetensors": collections.Counter(), "torch": collections.Counter()}
    examples: dict[str, list] = collections.defaultdict(list)
    signal.signal(signal.SIGALRM, _alarm)
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds and n < max_files:
        n += 1
        fmt = "safetensors" if n % 2 else "torch"
        if fmt == "safetensors":
            blob = mutate_safetensors(rnd.choice(st_seeds), rnd)
            ours_fn, ref_fn = (lambda b: parse_safetensors(b)[0]), reference_safetensors
        else:
            blob = mutate_torch(rnd.choice(pt_seeds), rnd)
            ours_fn, ref_fn = parse_torch_checkpoint, reference_torch
        ours = ref = None
        ours_err = ref_err = None
        signal.alarm(5)
        try:
            ours = ours_fn(blob)
        except CheckpointError as exc:
            ours_err = str(exc)
        except Timeout:
            ours_err = "TIMEOUT"
        except BaseException as exc:  # noqa: BLE001 - the point: nothing else may escape
            ours_err = f"ESCAPED {type(exc).__name__}: {str(exc)[:200]}"
        finally:
            signal.alarm(0)
        signal.alarm(5)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = ref_fn(blob)
            if isinstance(ref, tuple):
                ref_err, ref = f"reference loads it but {ref[0]}: {ref[1]}", None
                ref_accepts_other = True
            else:
                ref_accepts_other = False
        except Timeout:
            ref_err, ref_accepts_other = "reference TIMEOUT", False
        except BaseException as exc:  # noqa: BLE001
            ref_err, ref_accepts_other = f"{type(exc).__name__}: {str(exc)[:160]}", False
        finally:
            signal.alarm(0)
        if ours_err and (ours_err.startswith("ESCAPED") or ours_err == "TIMEOUT"):
            cls = "escaped"
        elif ours is not None and ref is not None:
            cls = "accepted-same" if same(ours, ref) else "accepted-different"
        elif ours is not None:
            cls = "accepted-mpt-only"
        elif ref is None and not ref_accepts_other:
            cls = "refused-both"
        else:
            reason = next((r for r, pat in ALLOWED_REFUSALS.items() if re.search(pat, ours_err)), None)
            if ref_accepts_other and "not-a-tensor-dict" in (ref_err or ""):
                reason = "not a dict of str -> tensor"
            if ref_accepts_other and "unsupported" in (ref_err or ""):
                reason = "unsupported dtype"
            cls = f"refused-mpt-only: {reason}" if reason else "refused-mpt-only: UNDOCUMENTED"
        # the canary: a legitimate load after every hostile one
        if not (same(parse_safetensors(canary_st)[0], want_st) and same(parse_torch_checkpoint(canary_pt), want_pt)):
            cls = "poisoned"
        counts[fmt][cls] += 1
        bad = cls in ("escaped", "accepted-different", "accepted-mpt-only", "poisoned") or "UNDOCUMENTED" in cls
        if bad and len(examples[cls]) < 5:
            examples[cls].append({"format": fmt, "ours": (ours_err or "accepted")[:300], "reference": ref_err,
                                  "hex": blob.hex() if len(blob) < 4096 and os.environ.get("FUZZ_HEX") else None})
    return {"files": n, "seconds": round(time.monotonic() - t0, 1),
            "counts": {k: dict(sorted(v.items())) for k, v in counts.items()}, "examples": examples}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-files", type=int, default=51000)
    p.add_argument("--memory-gib", type=float, default=0, help="RLIMIT_AS cap for this process (0: none)")
    args = p.parse_args()
    if args.memory_gib:
        import resource

        cap = int(args.memory_gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    print(json.dumps(run(args.seconds, args.seed, args.max_files)))


if __name__ == "__main__":
    main()
