"""Crafted ``.fxq`` files with valid checksums (issue 18 item 6): every one is an ``FxqFormatError``
with a bounded message; the header alone is read by ``read_header``; a file never sets train mode."""

import hashlib
import json
import struct

import pytest
import torch
from torch import nn

import fxquant
from fxquant import FxqFormatError
from fxquant.fileformat.container import MAX_MESSAGE, bounded
from fxquant.fileformat.saveload import read_header

_PRE = struct.Struct("<8sIQ")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.fxq"
    fxquant.save(fxquant.quantize(_model(), 4), path)
    return path


def _split(path):
    raw = path.read_bytes()
    magic, version, h = _PRE.unpack_from(raw)
    return magic, version, raw[_PRE.size:_PRE.size + h].decode(), bytearray(raw[_PRE.size + h + 32:])


def _write(path, magic, version, text: str, data: bytes):
    head = text.encode()
    pre = _PRE.pack(magic, version, len(head))
    path.write_bytes(pre + head + hashlib.sha256(pre + head).digest() + bytes(data))


def craft_text(path, edit):
    """Edit the header's JSON text (duplicate keys need text) and recompute the header checksum."""
    magic, version, text, data = _split(path)
    _write(path, magic, version, edit(text), data)


def craft(path, edit):
    craft_text(path, lambda text: json.dumps(_edited(json.loads(text), edit)))


def _edited(header, edit):
    edit(header)
    return header


def craft_data(path, key, values):
    """Overwrite the stored tensor ``key`` with float32 ``values``; recompute both checksums."""
    magic, version, text, data = _split(path)
    header = json.loads(text)
    entry = next(e for e in header["tensors"] if key in e["keys"])
    raw = torch.tensor(values, dtype=torch.float32).numpy().tobytes()
    data[entry["offset"]:entry["offset"] + len(raw)] = raw
    header["data"]["sha256"] = hashlib.sha256(data).hexdigest()
    _write(path, magic, version, json.dumps(header), data)


def _refused(path, *needles):
    for read in (read_header, lambda p: fxquant.load(p, _model())):
        with pytest.raises(FxqFormatError) as info:
            read(path)
        message = str(info.value)
        assert len(message) <= MAX_MESSAGE and all(n in message for n in needles), message
    return info.value


def test_duplicate_json_keys_are_refused_anywhere(saved):
    layer = next(iter(read_header(saved)["bits"]))
    craft_text(saved, lambda t: t.replace(f'"bits":{{"{layer}":4', f'"bits":{{"{layer}":99,"{layer}":4', 1))
    assert _refused(saved, "appears twice", repr(layer)).reason == "header"


def test_duplicate_json_key_inside_a_tensor_entry(saved):
    craft_text(saved, lambda t: t.replace('"dtype":"', '"dtype":"float64","dtype":"', 1))
    _refused(saved, "'dtype' appears twice")


@pytest.mark.parametrize("twice", [lambda keys: keys + keys[:1], lambda keys: [keys[0], keys[0]]])
def test_a_key_listed_twice_inside_one_tensor_entry(saved, twice):
    craft(saved, lambda h: h["tensors"][0].update(keys=twice(h["tensors"][0]["keys"])))
    _refused(saved, "twice")


@pytest.mark.parametrize("text", ["1" + "0" * 400, "-" + "9" * 30, "1" + "0" * 5000], ids=["1e400", "-1e30", "1e5000"])
def test_absurd_integers_are_format_errors(saved, text):
    craft_text(saved, lambda t: t.replace('"quant_config":{', f'"quant_config":{{"mse_min_ratio":{text},', 1))
    _refused(saved, "int64")


def test_absurd_float_is_a_format_error(saved):
    craft(saved, lambda h: h["quant_config"].update(mse_min_ratio=1e308 * 10))  # inf
    _refused(saved, "mse_min_ratio")


def test_overlapping_tensor_byte_ranges_are_refused(saved):
    def overlap(h):
        big = max(h["tensors"], key=lambda e: e["nbytes"])
        small = next(e for e in h["tensors"] if e is not big and 0 < e["nbytes"] <= big["nbytes"])
        small["offset"] = big["offset"]
    craft(saved, overlap)
    _refused(saved, "overlap")


def test_error_messages_are_bounded(saved):
    craft(saved, lambda h: h["tensors"][0].update(shape=[1] * 100_000))
    _refused(saved, "dimensions")
    craft(saved, lambda h: h["tensors"][0].update(keys=["k" * 100_000] * 2))
    _refused(saved, "characters]")
    assert bounded("x" * 10) == "x" * 10 and len(bounded("x" * 10**6)) == MAX_MESSAGE


@pytest.mark.parametrize("key, value", [
    ("0.weight_scale", float("nan")), ("0.weight_scale", float("inf")), ("0.weight_scale", 0.0),
    ("0.weight_scale", -1.0), ("0.weight_zero_point", float("nan")), ("1.running_var", float("inf")),
    ("1.running_var", -1.0), ("1.running_mean", float("nan")), ("5.bias", float("-inf")),
])
def test_non_finite_or_impossible_values_are_refused(saved, key, value):
    craft_data(saved, key, [value])
    read_header(saved)  # the header is fine; the values are checked when loading
    with pytest.raises(FxqFormatError, match="malformed data") as info:
        fxquant.load(saved, _model())
    assert repr(key) in str(info.value)


def test_header_training_flags_never_put_batchnorm_in_train_mode(saved):
    craft(saved, lambda h: h["model"].update(training=["", *[m.partition("=")[0] for m in h["model"]["modules"]]]))
    loaded = fxquant.load(saved, _model())
    assert not any(m.training for m in loaded.modules())
    before = loaded.state_dict()["1.running_mean"].clone()
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        first, second = loaded(x), loaded(x + 1)
        assert torch.equal(loaded(x), first) and not torch.equal(first, second)
    assert torch.equal(loaded.state_dict()["1.running_mean"], before)


def test_read_header_reads_only_the_header(saved, monkeypatch):
    magic, version, text, data = _split(saved)
    data[-1] ^= 0xFF  # damage the data section only
    _write(saved, magic, version, text, data)
    hashed = []
    real = hashlib.sha256

    def counting(data=b"", **kwargs):
        hashed.append(len(data))
        return real(data, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting)
    header = read_header(saved)  # checks the header's own checksum, never touches the data
    assert header["data"]["nbytes"] == len(data) and max(hashed) < saved.stat().st_size - len(data) + 1
    monkeypatch.undo()
    with pytest.raises(FxqFormatError, match="data checksum"):
        fxquant.load(saved, _model())
    saved.write_bytes(saved.read_bytes()[:-1])  # the data length is still checked against the file size
    with pytest.raises(FxqFormatError, match="truncated"):
        read_header(saved)
