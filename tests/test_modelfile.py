import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from fastunet import ModelFileError, Normalization, ReferenceUNet, UNetConfig, load_model, read_model, save_model
from fastunet.modelfile import read_model_metadata


@pytest.fixture
def tiny():
    return ReferenceUNet(UNetConfig(in_channels=2, num_classes=3, base_channels=4, depth=2)).eval()


def test_round_trip_identical_outputs(tmp_path, tiny):
    norm = Normalization(mode="percentile", low=2.0, high=99.5, scope="slice")
    path = save_model(tmp_path / "m.safetensors", tiny, normalization=norm, extra={"note": "x"})
    bundle = read_model(path)
    loaded = bundle.module
    assert loaded.config == tiny.config
    assert bundle.normalization == norm
    assert bundle.extra == {"note": "x"}
    x = torch.randn(2, 2, 60, 44)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tiny(x), rtol=0, atol=0)
        torch.testing.assert_close(load_model(path)(x), tiny(x), rtol=0, atol=0)
    config, normalization, extra = read_model_metadata(path)
    assert config == tiny.config and normalization == norm


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_file_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.safetensors"
    with open(bad, "wb") as f:
        pickle.dump(_Evil(str(marker)), f)
    # Make sure the payload really would run if unpickled.
    probe = tmp_path / "probe.pkl"
    with open(probe, "wb") as f:
        pickle.dump(_Evil(str(tmp_path / "probe_marker")), f)
    with open(probe, "rb") as f:
        pickle.load(f)
    assert (tmp_path / "probe_marker").exists()

    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_model(bad)
    assert not marker.exists()


def test_torch_save_checkpoint_is_refused(tmp_path, tiny):
    bad = tmp_path / "model.pt"
    torch.save(tiny.state_dict(), bad)
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(bad)


def test_truncated_file(tmp_path, tiny):
    path = save_model(tmp_path / "m.safetensors", tiny)
    data = path.read_bytes()
    for cut in (4, 200, len(data) - 10):
        broken = tmp_path / f"cut{cut}.safetensors"
        broken.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            load_model(broken)


def test_foreign_safetensors_and_missing(tmp_path, tiny):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a fastunet model"):
        load_model(foreign)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_config_weight_mismatch(tmp_path, tiny):
    tensors = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    meta = {
        "format": "fastunet",
        "format_version": "1",
        "config": json.dumps(UNetConfig(in_channels=2, num_classes=3, base_channels=8, depth=2).to_dict()),
    }
    path = tmp_path / "mismatch.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ModelFileError, match="shape"):
        load_model(path)


def test_save_into_a_missing_folder_is_a_clean_error(tmp_path, tiny):
    from fastunet.errors import UserError

    with pytest.raises(UserError, match="folder .* does not exist"):
        save_model(tmp_path / "nope" / "m.safetensors", tiny)
    assert not (tmp_path / "nope").exists()


def test_read_weights_checks_without_torch_and_widens_bf16(tmp_path, tiny):
    """read_weights: the file's arrays by name in the network's order (numpy), bf16 widened
    to float32; a renamed tensor and a NaN are refused as read_model refuses them."""
    from fastunet.modelfile import read_weights

    meta = {"format": "fastunet", "format_version": "1", "config": json.dumps(tiny.config.to_dict())}
    state = tiny.state_dict()
    path = tmp_path / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path), metadata=meta)
    config, _, _, weights = read_weights(path)
    assert config == tiny.config and list(weights) == list(state)
    for k, v in state.items():
        assert weights[k].dtype.name == "float32"
        assert torch.equal(torch.from_numpy(weights[k]), v.to(torch.bfloat16).float())
    renamed = dict(state)
    renamed["head.w"] = renamed.pop("head.weight")
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(tmp_path / "renamed.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="does not match its own config"):
        read_weights(tmp_path / "renamed.safetensors")
    broken = {k: v.clone() for k, v in state.items()}
    broken["head.bias"][0] = float("nan")
    save_file(broken, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="NaN or Inf"):
        read_weights(tmp_path / "nan.safetensors")
