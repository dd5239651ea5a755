"""``st2chip quantize model.nir --target xylo-audio3``: an MNIST-1D MLP trained by st2chip, fine-tuned as Xylo
computes it, then ``st2chip verify --target xylo-audio3`` passes (engine = xylosim on named samples, float vs chip
spike agreement at least 95 %); Loihi's flags are refused with a Xylo target."""

import numpy as np
import pytest

from st2chip.cli.main import main
from st2chip.learn.data import load_mnist1d_split, sequence_encode


@pytest.fixture(scope="module")
def trained(mnist1d_mlp, tmp_path_factory):
    """The shared MNIST-1D MLP (``m.pt``, ``m.nir``) and 400 labelled training samples (``data.npz``)."""
    folder = tmp_path_factory.mktemp("quantize_xylo")
    for name in ("m.pt", "m.nir"):
        (folder / name).write_bytes((mnist1d_mlp / name).read_bytes())
    train, _ = load_mnist1d_split()
    spikes = sequence_encode(train.x[:400], 16).numpy().transpose(1, 0, 2).astype(np.uint8)
    np.savez(folder / "data.npz", input=spikes, labels=train.y[:400])
    return folder


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_quantize_for_xylo_then_verify_passes(trained, capsys) -> None:
    out = trained / "m_xylo.nir"
    code, text, err = _run(capsys, "quantize", trained / "m.nir", "--target", "xylo-audio3", "--inputs",
                           trained / "data.npz", "--epochs", "1", "--device", "cpu", "-o", out)
    assert code == 0, err
    assert "xylo-audio3 in the loop" in text and "holds the trained weights exactly" in text
    code, text, err = _run(capsys, "verify", out, "--target", "xylo-audio3", "--samples", "100")
    assert code == 0, text + err
    assert "engine vs xylosim: equal on samples 0-19" in text
    worst = float(text.split("worst layer 'lif1' ")[1].split(" %")[0])
    assert worst >= 95.0


@pytest.mark.parametrize("flags, named", [(["--decay-groups", "2"], "--decay-groups"),
                                          (["--headroom", "64"], "--headroom")])
def test_loihi_flags_are_refused_with_a_xylo_target(trained, capsys, flags, named) -> None:
    code, _, err = _run(capsys, "quantize", trained / "m.nir", "--target", "xylo-audio3", *flags,
                        "-o", trained / "x.nir")
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1


def test_a_checkpoint_is_exported_first(trained, capsys) -> None:
    code, _, err = _run(capsys, "quantize", trained / "m.pt", "--target", "xylo-audio3", "-o", trained / "x.nir")
    assert code == 2 and "st2chip export" in err
