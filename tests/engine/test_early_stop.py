"""The early-stop rule and its message, named by the metric it watches."""
from __future__ import annotations

from tunesam.engine.run_folder import State


def test_stop_after_patience_epochs_and_name_the_metric() -> None:
    dsc = State(best=float("-inf"))
    seen = [dsc.record({"epoch": e}, v, patience=2) for e, v in enumerate([50.0, 61.25, 60.0, 61.0], start=1)]
    assert seen == [(True, False), (True, False), (False, False), (False, True)]
    assert dsc.stop_message(2) == "early stop: no better validation DSC for 2 epochs (best 61.25 at epoch 2)"
    loss = State(best=float("inf"))
    seen = [loss.record({"epoch": e}, v, patience=1, higher=False) for e, v in enumerate([0.5171, 0.5146, 0.52], 1)]
    assert seen == [(True, False), (True, False), (False, True)]
    assert loss.stop_message(1, "val_loss") == "early stop: no better validation loss for 1 epochs (best 0.5146 at epoch 2)"
