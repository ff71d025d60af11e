"""The best validation score in best/metrics.json: kept across runs and replaced only by a better one; a damaged file
is a one-line error naming it, never a silent reset (that would let a worse checkpoint overwrite best/)."""
import os

import pytest

from unet_perf.errors import UserError
from unet_perf.storage.run_dir import BEST_METRICS
from unet_perf.training.checkpointing import RunCheckpoints


class _Writer(object):
    def __init__(self, directory):
        self.directory = directory


@pytest.mark.parametrize("content", ["{not json", '{"dice": 0.5}', '{"v_rand": "high"}'])
def test_unreadable_best_score_is_an_error_not_a_reset(tmp_path, content):
    best = tmp_path / "best"
    best.mkdir()
    (best / BEST_METRICS).write_text(content)
    with pytest.raises(UserError) as err:
        RunCheckpoints(_Writer(str(tmp_path)), _Writer(str(best)))
    message = str(err.value)
    assert os.path.join(str(best), BEST_METRICS) in message and "delete" in message and "\n" not in message


def test_best_score_survives_and_only_a_better_one_replaces_it(tmp_path):
    best = tmp_path / "best"
    best.mkdir()
    (best / BEST_METRICS).write_text('{"v_rand": 0.9, "step": 100}')
    saved = RunCheckpoints(_Writer(str(tmp_path)), _Writer(str(best)))
    assert saved.best_score == 0.9
    assert saved.offer_best(sess=None, step=200, metrics={"v_rand": 0.85}) is False
    assert saved.best_score == 0.9
    fresh = RunCheckpoints(_Writer(str(tmp_path)), _Writer(str(tmp_path / "missing")))
    assert fresh.best_score is None


class _SavingWriter(_Writer):
    def save(self, sess, step):
        return True


def test_multi_class_best_is_chosen_by_mean_dice_and_the_file_names_it(tmp_path):
    import json

    best = tmp_path / "best"
    best.mkdir()
    saved = RunCheckpoints(_Writer(str(tmp_path)), _SavingWriter(str(best)), metric="mean_dice")
    assert saved.offer_best(None, 10, {"mean_dice": 0.5, "pixel_accuracy": 0.9}) is True
    assert saved.offer_best(None, 20, {"mean_dice": 0.4, "pixel_accuracy": 0.99}) is False
    assert saved.offer_best(None, 30, {"mean_dice": float("nan")}) is False  # no score is never a best
    record = json.loads((best / BEST_METRICS).read_text())
    assert record["metric"] == "mean_dice" and record["mean_dice"] == 0.5 and record["step"] == 10
    again = RunCheckpoints(_Writer(str(tmp_path)), _Writer(str(best)), metric="mean_dice")
    assert again.best_score == 0.5
    with pytest.raises(UserError, match="ranks best/ by mean_dice"):
        RunCheckpoints(_Writer(str(tmp_path)), _Writer(str(best)), metric="v_rand")


def test_the_chief_validates_a_multi_class_model_by_mean_dice(tmp_path, tiny_config):
    """ChiefDuties.validate wires a C >= 2 validator to best/ (by mean_dice), TensorBoard and the printed line."""
    from unet_perf.training.duties import ChiefDuties

    lines, logged = [], {}
    metrics = {"mean_dice": 0.61, "mean_iou": 0.5, "pixel_accuracy": 0.8, "dice_class_0": 0.9,
               "dice_class_1": 0.61, "iou_class_0": 0.8, "iou_class_1": 0.5}

    class Stub(object):
        pass

    console = Stub()
    console.say = lines.append
    chief = ChiefDuties(tiny_config(num_classes=2), team=None, console=console)
    chief.training = Stub()
    chief.training.extras = Stub()
    chief.training.extras.validator = Stub()
    chief.training.extras.validator.run = lambda sess: metrics
    chief.log = Stub()
    chief.log.scalars = lambda step, values: logged.update(values)
    best = tmp_path / "best"
    best.mkdir()
    chief.saved = RunCheckpoints(_Writer(str(tmp_path)), _SavingWriter(str(best)), metric=chief.metric)
    chief.validate(5)
    assert "validation/dice_class_1" in logged
    assert lines[0].startswith("validation at step 5: mean_dice 0.6100") and "best so far" in lines[0]
    assert "dice_class_0" not in lines[0]
    assert chief.saved.best_score == 0.61
