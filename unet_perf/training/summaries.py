"""TensorBoard scalars and images written from fetched numpy values (the training graph has no summary ops)."""
from unet_perf.compat import v1


class SummaryLog(object):
    """Scalars and images for TensorBoard, written from fetched numpy values. Summaries are optional: a write
    failure (e.g. a full disk) prints one warning and turns them off; checkpoints report such problems as errors."""

    def __init__(self, model_dir, warn):
        self.warn = warn
        self.writer = None
        self._guard(lambda: setattr(self, "writer", v1.summary.FileWriter(model_dir)))

    def _guard(self, action):
        try:
            action()
        except Exception as err:  # noqa: BLE001 -- any writer failure only disables summaries
            self.writer = None
            self.warn("warning: TensorBoard summaries disabled ({})".format(str(err).splitlines()[0][:200]))

    def scalars(self, step, values):
        if self.writer is None:
            return
        summary = v1.Summary()
        for tag in sorted(values):
            summary.value.add(tag=tag, simple_value=float(values[tag]))
        self._guard(lambda: self.writer.add_summary(summary, step))

    def images(self, step, tag, panels):
        if self.writer is None:
            return
        summary = v1.Summary()
        for index, (shape, png) in enumerate(panels):
            value = summary.value.add(tag="{}/{}".format(tag, index))
            value.image.height = int(shape[0])
            value.image.width = int(shape[1])
            value.image.colorspace = 3 if len(shape) == 3 and shape[2] == 3 else 1  # class colours or gray
            value.image.encoded_image_string = png
        self._guard(lambda: self.writer.add_summary(summary, step))

    def close(self):
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except Exception:  # noqa: BLE001 -- must not mask the error that stopped training
                pass
