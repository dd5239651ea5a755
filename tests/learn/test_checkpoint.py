import pytest
import torch

from st2chip.learn.checkpoint import load_mlp, read_checkpoint, save_checkpoint
from st2chip.errors import InputError


def test_round_trip_is_exact(random_mlp, tmp_path):
    model = random_mlp()
    path = save_checkpoint(model, "mlp", model.config.to_dict(), tmp_path / "m.pt", extra={"seed": 3})
    again = load_mlp(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert read_checkpoint(path)["extra"] == {"seed": 3}


def test_foreign_files_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt.*not an st2chip checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(InputError, match="missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")


def test_wrong_kind_is_refused(random_mlp, tmp_path):
    model = random_mlp()
    path = save_checkpoint(model, "st", {}, tmp_path / "st.pt")
    with pytest.raises(InputError, match="'st' model"):
        load_mlp(path)
