"""Training guards: a non-finite loss stops the run, naming the step and the task."""
import pytest
import torch

from tbkin.errors import TbkinError
from tbkin.train.guards import NonFiniteLossError, check_finite


def test_finite_losses_pass():
    check_finite({"mlm": torch.tensor(2.5), "itm": torch.tensor([0.1, 0.2]), "plain": 1.0}, step=3, where="pretrain")
    check_finite({}, step=0, where="pretrain")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_loss_names_step_run_and_task(bad):
    losses = {"mlm": torch.tensor(1.0), "skm": torch.tensor(bad, requires_grad=True) * 2}
    with pytest.raises(NonFiniteLossError) as err:
        check_finite(losses, step=17, where="pretrain")
    msg = str(err.value)
    assert "pretrain" in msg and "step 17" in msg and "skm" in msg and "mlm" not in msg
    assert isinstance(err.value, TbkinError)  # the CLI prints it as one line
