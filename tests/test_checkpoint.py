import pickle

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from gankit import checkpoint as ckpt
from gankit.errors import GankitError
from gankit.game import make_optimizers
from gankit.models import mlp


def _players(seed):
    torch.manual_seed(seed)
    nets = mlp.build(mlp.Config(g_widths=(16,), d_widths=(16,)), (1, 8, 8))
    opts = make_optimizers(nets, {"G": 1e-3, "D": 2e-3}, (0.5, 0.999))
    # one step so that Adam has state to save
    for name, net in nets.items():
        out = net(torch.randn(4, 1, 8, 8) if name == "D" else torch.randn(4, 64))
        out.sum().backward()
        opts[name].step()
    return nets, opts


def test_save_load_identity(tmp_path):
    nets, opts = _players(0)
    extra = {"fixed_z": torch.randn(3, 64)}
    ckpt.save_checkpoint(tmp_path / "c.safetensors", nets, opts, {"step": 7}, extra)
    nets2, opts2 = _players(1)
    meta, extra2 = ckpt.load_checkpoint(tmp_path / "c.safetensors", nets2, opts2)
    assert meta["step"] == 7
    torch.testing.assert_close(extra2["fixed_z"], extra["fixed_z"], rtol=0, atol=0)
    for name in nets:
        for a, b in zip(
            nets[name].state_dict().values(), nets2[name].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b)
        s1, s2 = opts[name].state_dict(), opts2[name].state_dict()
        assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"]
        for i in s1["state"]:
            for k in s1["state"][i]:
                assert torch.equal(s1["state"][i][k], s2["state"][i][k])


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    resource = pytest.importorskip("resource")  # POSIX
    path = tmp_path / "last.safetensors"
    nets, opts = _players(0)
    ckpt.save_checkpoint(path, nets, opts, {"step": 1})
    # A real write error, as a full disk gives one: files may not grow past half a checkpoint
    # (EFBIG; Python ignores the SIGXFSZ that comes with it).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size // 2, hard))
    try:
        with pytest.raises((OSError, SafetensorError), match="File too large"):
            ckpt.save_checkpoint(path, nets, opts, {"step": 2})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert ckpt.read_meta(path)["step"] == 1  # the old one, intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left


@pytest.mark.parametrize("cut", [10, 100, -50])
def test_truncated_or_corrupt_checkpoint_is_refused(tmp_path, cut):
    nets, opts = _players(0)
    good = tmp_path / "good.safetensors"
    ckpt.save_checkpoint(good, nets, opts, {"step": 1})
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut])
    with pytest.raises(GankitError, match="corrupt or truncated"):
        ckpt.load_checkpoint(bad, _players(1)[0])


def test_foreign_safetensors_file_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(GankitError, match="not a gankit checkpoint"):
        ckpt.read_meta(tmp_path / "other.safetensors")


def test_mismatched_network_is_refused(tmp_path):
    nets, opts = _players(0)
    ckpt.save_checkpoint(tmp_path / "c.safetensors", nets, opts, {"step": 1})
    other = mlp.build(mlp.Config(g_widths=(32,), d_widths=(16,)), (1, 8, 8))
    with pytest.raises(GankitError, match="does not match network G"):
        ckpt.load_checkpoint(tmp_path / "c.safetensors", other)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    nets, opts = _players(0)
    ckpt.save_checkpoint(tmp_path / "c.safetensors", nets, opts, {"step": 1})

    def forbidden(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    nets2, opts2 = _players(1)
    meta, _ = ckpt.load_checkpoint(tmp_path / "c.safetensors", nets2, opts2)
    assert meta["step"] == 1
    for name in nets:
        for key, value in nets[name].state_dict().items():
            assert torch.equal(nets2[name].state_dict()[key], value), f"{name}.{key}"
        state, state2 = opts[name].state_dict()["state"], opts2[name].state_dict()["state"]
        assert all(torch.equal(state2[i]["exp_avg"], state[i]["exp_avg"]) for i in state)
