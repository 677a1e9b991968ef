"""External weights: looked up in the right places, loaded without downloading, clear when absent."""

import logging
from pathlib import Path

import pytest
import torch
from torchvision.models import AlexNet_Weights, VGG16_Weights, VGG19_Weights
from torchvision.models.vgg import cfgs, make_layers

from piti import weights
from piti.errors import CheckpointError, MissingWeightsError


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache (via TORCH_HOME) and no PITI_WEIGHTS_DIR; returns its checkpoints dir."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    assert ckpt == tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    return ckpt


def _fake_vgg19_file(folder: Path, seed=0) -> tuple[Path, dict]:
    """A small torchvision-style VGG19 file: the first 8 feature layers, keyed ``features.<i>.*``."""
    torch.manual_seed(seed)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["E"])[:8].state_dict().items()}
    file = folder / weights.WEIGHTS["vgg19"].filename
    torch.save(state, file)
    return file, state


def test_file_names_and_urls_are_torchvision_s():
    for name, enum in [("vgg19", VGG19_Weights), ("vgg16", VGG16_Weights), ("alexnet", AlexNet_Weights)]:
        url = enum.IMAGENET1K_V1.url
        assert weights.WEIGHTS[name].url == url
        assert weights.WEIGHTS[name].filename == url.rsplit("/", 1)[1]


def test_missing_weights_name_the_file_folder_and_url(hub):
    with pytest.raises(MissingWeightsError) as e:
        weights.find_weights("vgg19")
    msg = str(e.value)
    assert "vgg19-dcbb9e9d.pth" in msg and str(hub) in msg
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in msg
    with pytest.raises(MissingWeightsError, match="allow_random"):
        weights.vgg19_features()
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        weights.lpips_model("alex")


def test_missing_inception_and_clip_in_an_explicit_folder(tmp_path):
    with pytest.raises(MissingWeightsError, match="inception-2015-12-05.pt"):
        weights.find_weights("inception", tmp_path)
    with pytest.raises(MissingWeightsError, match="ViT-B-32.pt"):
        weights.find_weights("clip", tmp_path)
    with pytest.raises(MissingWeightsError, match="unknown weights"):
        weights.find_weights("resnet")


def test_weights_in_the_hub_cache_are_found_and_loaded(hub):
    file, state = _fake_vgg19_file(hub)
    assert weights.find_weights("vgg19") == file
    net = weights.vgg19_features()
    assert net.piti_random_weights is False and not weights.uses_random_weights(net)
    torch.testing.assert_close(net[7].weight, state["features.7.weight"])
    torch.testing.assert_close(net[0].bias, state["features.0.bias"])
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_env_var_and_explicit_path_come_first(hub, tmp_path, monkeypatch):
    _fake_vgg19_file(hub, seed=0)
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    env_file, env_state = _fake_vgg19_file(env_dir, seed=1)
    monkeypatch.setenv(weights.ENV_VAR, str(env_dir))
    assert weights.find_weights("vgg19") == env_file
    torch.testing.assert_close(weights.vgg19_features()[2].weight, env_state["features.2.weight"])
    own_dir = tmp_path / "own"
    own_dir.mkdir()
    own_file, own_state = _fake_vgg19_file(own_dir, seed=2)
    assert weights.find_weights("vgg19", own_dir) == own_file  # a folder
    assert weights.find_weights("vgg19", own_file) == own_file  # a file
    torch.testing.assert_close(weights.vgg19_features(path=own_file)[5].weight, own_state["features.5.weight"])
    with pytest.raises(MissingWeightsError, match="nowhere.pth"):
        weights.find_weights("vgg19", tmp_path / "nowhere.pth")  # no fallback from an explicit path


def test_lpips_backbone_is_loaded_from_a_torchvision_file(hub):
    import torchvision

    torch.manual_seed(3)
    state = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(state, hub / weights.WEIGHTS["alexnet"].filename)
    model = weights.lpips_model("alex")
    assert model.piti_random_weights is False
    own = model.net.state_dict()  # lpips names its layers "slice<k>.<torchvision index>"
    torch.testing.assert_close(own["slice1.0.weight"], state["features.0.weight"])
    torch.testing.assert_close(own["slice5.10.bias"], state["features.10.bias"])
    # the linear layers come from the lpips package itself, not random
    lin = model.lin0.model[1].weight
    assert lin.min() >= 0 and lin.abs().sum() > 0


def test_random_weights_only_on_request_and_loudly(hub, caplog):
    with caplog.at_level(logging.WARNING, logger="piti.weights"):
        net = weights.vgg19_features(allow_random=True)
    assert net.piti_random_weights is True and weights.uses_random_weights(torch.nn.Sequential(net))
    assert "RANDOM vgg19 WEIGHTS" in caplog.text


def test_bad_files_give_checkpoint_errors(hub):
    (hub / weights.WEIGHTS["vgg19"].filename).write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(CheckpointError, match="vgg19-dcbb9e9d.pth"):
        weights.vgg19_features()
    torch.save({"features.0.weight": torch.zeros(1, 1, 1, 1)}, hub / weights.WEIGHTS["vgg19"].filename)
    with pytest.raises(CheckpointError, match="does not fit"):
        weights.vgg19_features()


def test_describe_weights_reports_presence(hub):
    rows = {name: (path, present) for name, path, present in weights.describe_weights()}
    assert set(rows) == {"vgg19", "vgg16", "alexnet", "inception", "inception-pytorch", "clip"}
    assert rows["vgg19"] == (hub / "vgg19-dcbb9e9d.pth", False)
    _fake_vgg19_file(hub)
    rows = {name: (path, present) for name, path, present in weights.describe_weights()}
    assert rows["vgg19"] == (hub / "vgg19-dcbb9e9d.pth", True)
