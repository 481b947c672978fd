"""The compact sparse file (``sparseavg.pruning.compress``): bit-exact round trips, the choice
of encoding, its size, and damaged or foreign files refused with one message."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sparseavg
from sparseavg.models import build_model
from sparseavg.pruning import (
    Mask,
    MaskError,
    compress,
    decompress,
    load_sparse,
    magnitude_prune,
    prunable_parameters,
    save_sparse,
)
from sparseavg.pruning.compress import (
    FORMAT,
    decode_positions,
    encode_positions,
    packbits,
    unpackbits,
)
from sparseavg.utils.files import CorruptFileError, save_tensors

BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers (``-0.0`` and ``+0.0`` differ; NaNs compare)."""
    return t.view(BITS[t.dtype]) if t.dtype in BITS else t


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)  # same names, same order
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(bits(a[name]), bits(b[name])), name


def small_state(dtype: torch.dtype, density: float, seed: int = 0) -> tuple[dict, Mask]:
    """A conv + BatchNorm + linear state in ``dtype`` with its mask at ``density`` in each
    layer (by magnitude), masked by multiplication so that pruned negative weights are ``-0.0``."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(3, 8, 5),
        torch.nn.BatchNorm1d(8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 36, 10),
    ).to(dtype)
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), 1.0 - density, scope="layerwise")
    return mask.applied(model.state_dict()), mask


# -- bit sets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_packbits_is_numpys_and_unpacks_to_the_same_flags(n):
    flags = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.3
    packed = packbits(flags)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 8)
    assert np.array_equal(packed.numpy(), np.packbits(flags.numpy()))
    assert torch.equal(unpackbits(packed, n), flags)


def test_the_first_flag_is_the_most_significant_bit():
    flags = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    assert packbits(flags).tolist() == [0b1001_0000, 0b1000_0000]


def test_an_encoding_is_chosen_by_its_bytes():
    flags = torch.zeros(100_000, dtype=torch.bool)
    flags[::40] = True  # 2500 alive: indices 10,000 bytes < bitmask 12,500 bytes
    kind, stored = encode_positions(flags)
    assert kind == "indices" and stored is not None and stored.dtype == torch.int32
    assert stored.numel() == 2500 and stored[:3].tolist() == [0, 40, 80]
    flags[1::40] = True  # 5000 alive: indices 20,000 bytes > bitmask 12,500 bytes
    kind, stored = encode_positions(flags)
    assert kind == "bitmask" and stored is not None and stored.numel() == 12_500
    tie = torch.zeros(64, dtype=torch.bool)
    tie[[3, 60]] = True  # 8 bytes either way: the bitmask
    assert encode_positions(tie)[0] == "bitmask"
    assert encode_positions(torch.zeros(5, dtype=torch.bool)) == ("none", None)
    assert encode_positions(torch.ones(5, dtype=torch.bool)) == ("all", None)
    for f in (flags, tie):
        assert torch.equal(decode_positions(*encode_positions(f), f.numel()), f)


@pytest.mark.parametrize(
    ("encoding", "stored", "n", "message"),
    [
        ("bitmask", torch.tensor([255], dtype=torch.uint8), 5, "bits set past its end"),
        ("bitmask", torch.tensor([1, 2], dtype=torch.uint8), 5, "1 uint8 bytes"),
        ("indices", torch.tensor([3, 2], dtype=torch.int32), 5, "not increasing"),
        ("indices", torch.tensor([1, 5], dtype=torch.int32), 5, "out of range"),
        ("indices", torch.tensor([1, 2], dtype=torch.int64), 5, "torch.int32"),
        ("all", torch.tensor([1], dtype=torch.uint8), 5, "does not fit"),
        ("bitmask", None, 5, "does not fit"),
        ("runs", None, 5, "unknown position encoding 'runs'"),
    ],
)
def test_positions_that_cannot_be_decoded_are_refused(encoding, stored, n, message):
    with pytest.raises(CorruptFileError, match=message):
        decode_positions(encoding, stored, n)


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_masked_state_comes_back_bit_for_bit(dtype, tmp_path):
    state, mask = small_state(dtype, density=0.1)
    negative_zeros = sum(int((torch.signbit(state[n]) & (state[n] == 0)).sum()) for n in mask)
    assert negative_zeros > 500  # the round trip has signs of zero to keep
    tensors, metadata = compress(state, mask)
    assert_bitwise_equal(decompress(tensors, metadata), state)
    path = tmp_path / "model.sparse.safetensors"
    save_sparse(path, state, mask)
    assert_bitwise_equal(load_sparse(path), state)
    assert "num_batches_tracked" in " ".join(state)  # an int64 buffer stored as it is
    assert torch.equal(tensors["1.num_batches_tracked"], state["1.num_batches_tracked"])
    # the linear weight: 2880 weights, 288 alive, a bitmask of 360 bytes over them and one of
    # 324 bytes over the 2592 pruned ones for their signs
    assert tensors["3.weight:values"].dtype == dtype
    assert [tensors[f"3.weight:{part}"].numel() for part in ("values", "positions")] == [288, 360]
    assert tensors["3.weight:negative_zeros"].numel() == 324


def test_all_alive_and_all_pruned_tensors_store_no_positions():
    state, _ = small_state(torch.float32, density=1.0)
    state["0.weight"] = state["0.weight"] * 0  # all pruned, the negative ones as -0.0
    mask = Mask(
        {
            "0.weight": torch.zeros(8, 3, 5, dtype=torch.bool),
            "3.weight": torch.ones(10, 288, dtype=torch.bool),
        }
    )
    tensors, metadata = compress(state, mask)
    layout = {e["name"]: e for e in json.loads(metadata["layout"])}
    assert layout["0.weight"]["positions"] == "none" and layout["3.weight"]["positions"] == "all"
    assert layout["0.weight"]["negative_zeros"] == "bitmask"  # 120 pruned: 15 bytes
    assert layout["3.weight"]["negative_zeros"] == "none"
    assert tensors["0.weight:values"].numel() == 0 and "0.weight:positions" not in tensors
    assert tensors["3.weight:values"].numel() == 2880 and "3.weight:positions" not in tensors
    assert_bitwise_equal(decompress(tensors, metadata), state)


def test_a_state_with_only_positive_zeros_stores_no_signs():
    state, mask = small_state(torch.float32, density=0.5)
    state = {n: t.abs() if n in mask else t for n, t in state.items()}
    tensors, metadata = compress(state, mask)
    assert not [k for k in tensors if k.endswith(":negative_zeros")]
    assert_bitwise_equal(decompress(tensors, metadata), state)


def test_lenet_300_100_at_90_percent_is_under_a_fifth_of_the_dense_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet300_100", 10, (1, 28, 28))
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), 0.9)
    state = mask.applied(model.state_dict())
    dense, sparse = tmp_path / "dense.safetensors", tmp_path / "sparse.safetensors"
    save_tensors(dense, state)
    save_sparse(sparse, state, mask)
    tensors, _ = compress(state, mask)
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    # 26,620 alive float32 values, bitmasks over the 266,200 weights (33,275 bytes) and over
    # the 239,580 pruned ones (27,708 + 2,196 + 44 bytes), 410 float32 biases
    assert mask.num_alive == 26_620
    assert payload == 4 * 26_620 + 33_275 + 29_948 + 4 * 410
    ratio = sparse.stat().st_size / dense.stat().st_size
    assert ratio < 0.20
    assert ratio == pytest.approx(0.162, abs=0.001)
    assert_bitwise_equal(sparseavg.load_sparse(sparse), state)


# -- refused inputs ------------------------------------------------------------------------------


def test_weights_alive_where_the_mask_prunes_are_refused():
    state, mask = small_state(torch.float32, density=0.5)
    state["3.weight"] = state["3.weight"] + 1.0
    with pytest.raises(MaskError, match=r"'3.weight' holds 1440 non-zero values where the mask"):
        compress(state, mask)
    with pytest.raises(MaskError, match="not a parameter"):
        compress({"0.bias": state["0.bias"]}, mask)


def test_a_state_name_that_a_part_would_take_is_refused():
    state, mask = small_state(torch.float32, density=0.5)
    state["3.weight:values"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"\['3.weight:values'\]"):
        compress(state, mask)


@pytest.fixture
def sparse_file(tmp_path):
    state, mask = small_state(torch.float32, density=0.1)
    path = tmp_path / "m.sparse.safetensors"
    save_sparse(path, state, mask)
    return path


def test_a_truncated_file_is_refused_naming_it(sparse_file):
    sparse_file.write_bytes(sparse_file.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match=f"{sparse_file}: not a readable safetensors"):
        load_sparse(sparse_file)


def test_a_changed_value_is_refused_by_the_checksum(sparse_file):
    data = bytearray(sparse_file.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor: a value, still a valid file
    sparse_file.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=f"{sparse_file}: its tensors' checksum differs"):
        load_sparse(sparse_file)


def test_files_that_are_not_ours_are_refused(tmp_path):
    dense = tmp_path / "dense.safetensors"
    save_tensors(dense, {"w": torch.ones(3)}, metadata={"format": "sparseavg-export/1"})
    foreign = (
        r"dense.safetensors: not a sparse model file of sparseavg \(format 'sparseavg-export/1'"
    )
    with pytest.raises(CorruptFileError, match=foreign):
        load_sparse(dense)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.ones(3)}, str(bare))
    with pytest.raises(CorruptFileError, match="format None"):
        load_sparse(bare)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CorruptFileError, match=r"junk\.safetensors: not a readable safetensors"):
        load_sparse(junk)
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors: no such file"):
        load_sparse(tmp_path / "missing.safetensors")


def test_tensors_that_do_not_fit_the_layout_are_refused(sparse_file):
    with safe_open(str(sparse_file), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    assert metadata["format"] == FORMAT
    layout = json.loads(metadata["layout"])
    with pytest.raises(CorruptFileError, match="layout is not valid JSON"):
        decompress(tensors, {**metadata, "layout": "[{"})
    wrong = [dict(e, shape=[10, 287]) if e["name"] == "3.weight" else e for e in layout]
    with pytest.raises(CorruptFileError, match=r"bitmask of 2870 positions is 359 uint8 bytes"):
        decompress(tensors, {**metadata, "layout": json.dumps(wrong)})
    signs = [dict(e, negative_zeros="none") if e["name"] == "3.weight" else e for e in layout]
    with pytest.raises(CorruptFileError, match="the 'none' encoding does not fit"):
        decompress(tensors, {**metadata, "layout": json.dumps(signs)})
    no_bias = [e for e in layout if e["name"] != "0.bias"]
    with pytest.raises(CorruptFileError, match=r"tensors \['0.bias'\] are not in its layout"):
        decompress(tensors, {**metadata, "layout": json.dumps(no_bias)})
    repeated = [*layout, layout[0]]
    with pytest.raises(CorruptFileError, match="malformed or repeated entry"):
        decompress(tensors, {**metadata, "layout": json.dumps(repeated)})
    missing = {k: v for k, v in tensors.items() if k != "0.bias"}
    with pytest.raises(CorruptFileError, match="checksum differs"):
        decompress(missing, metadata)


# -- sizes a file claims, devices, plain masks (issue 16, item 4) --------------------------------


def _claiming(path, shape, positions="none"):
    """A small valid sparse file (checksum and all) whose layout claims ``shape`` for a
    weight: the checksum covers the stored tensors, not the layout."""
    state = {"w": torch.zeros(8), "b": torch.ones(2)}
    alive = torch.zeros(8, dtype=torch.bool) if positions == "none" else torch.ones(8).bool()
    tensors, metadata = compress({**state, "w": state["w"] + alive}, Mask({"w": alive}))
    layout = json.loads(metadata["layout"])
    layout[0]["shape"] = list(shape)
    save_file(tensors, str(path), metadata={**metadata, "layout": json.dumps(layout)})
    return path


@pytest.mark.parametrize(
    ("shape", "positions"),
    [([200_000_000], "none"), ([3_000_000_000], "none"), ([50_000, 50_000], "none"),
     ([300_000_000], "all")],
)  # fmt: skip
def test_a_small_file_claiming_a_huge_tensor_is_refused_before_allocating(
    tmp_path, shape, positions
):
    path = _claiming(tmp_path / "bomb.sparse.safetensors", shape, positions)
    assert path.stat().st_size < 500
    with pytest.raises(CorruptFileError, match=f"{path}: ") as err:
        load_sparse(path)
    assert "\n" not in str(err.value)
    if positions == "none":
        assert "claims a dense state of" in str(err.value)
        assert f"{math.prod(shape) * 10 + 8} bytes" in str(err.value)  # w and its flags, b
    else:  # "all" alive: as many values as positions, or the file lies
        assert "300000000 alive positions but (8,) values" in str(err.value)


def test_the_dense_limit_follows_the_stored_bytes_and_max_bytes_lifts_it(tmp_path):
    # 1 of 2**20 weights alive: 8 bytes stored as index and value, 4 MiB dense: allowed
    w = torch.zeros(2**20)
    w[12345] = 1.5
    mask = Mask({"w": w != 0})
    path = tmp_path / "sparse.sparse.safetensors"
    save_sparse(path, {"w": w}, mask)
    assert torch.equal(load_sparse(path)["w"], w)
    with pytest.raises(CorruptFileError, match="more than max_bytes=1000"):
        load_sparse(path, max_bytes=1000)
    bomb = _claiming(tmp_path / "bomb.sparse.safetensors", [200_000_000])
    with pytest.raises(CorruptFileError, match="pass max_bytes= to load a file you trust"):
        load_sparse(bomb)
    small = _claiming(tmp_path / "small.sparse.safetensors", [1000])
    assert load_sparse(small)["w"].shape == (1000,)  # a claim the limit allows is read


def test_meta_device_gives_shapes_and_dtypes_of_a_good_file(sparse_file):
    dense = load_sparse(sparse_file)
    meta = load_sparse(sparse_file, device="meta")
    assert list(meta) == list(dense)
    for name, t in meta.items():
        assert t.is_meta and t.shape == dense[name].shape and t.dtype == dense[name].dtype


def test_a_plain_dict_mask_is_accepted_as_attach_accepts_it(tmp_path):
    state, mask = small_state(torch.float32, density=0.3)
    path = tmp_path / "dict.sparse.safetensors"
    save_sparse(path, state, dict(mask))
    assert_bitwise_equal(load_sparse(path), state)
    assert compress(state, dict(mask)).metadata == compress(state, mask).metadata
    with pytest.raises(MaskError, match="mask must be a Mask or a name -> bool tensor mapping"):
        save_sparse(path, state, [mask["0.weight"]])  # type: ignore[arg-type]
    with pytest.raises(MaskError, match=r"dtype torch\.float32; masks must be torch\.bool"):
        save_sparse(path, state, {"0.weight": mask["0.weight"].float()})
