"""Every knob of unet_perf in one dataclass, and the argparse parser built from it.

Flag names follow the ModelZoo 2D_Unet scripts (`--data_path`, `--batch_size`, `--learning_rate`,
`--train_epochs`, `--max_steps`, `--iterations_per_loop`, `--precision`, `--model_dir`, ...).
"""
import argparse
import dataclasses

from unet_perf.errors import UserError
from unet_perf.tf_logging import add_verbose_flag

PRECISIONS = ("fp32", "fp16", "bf16")
NORMALIZE_MODES = ("unit", "symmetric", "standard")
WEIGHT_CHOICES = ("ema", "raw")
AUGMENT_ENGINES = ("auto", "xla", "graph", "opencv")
NPU_PRECISION_MODES = (
    "allow_mix_precision", "allow_fp32_to_fp16", "force_fp16", "force_fp32", "must_keep_origin_dtype",
    "allow_mix_precision_bf16", "allow_fp32_to_bf16",
)


def _field(default, help, choices=None):
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class Config:
    # --- data -------------------------------------------------------------------------------------------
    data_path: str = _field("", "folder of image/label pairs or ISBI TIFF volumes; empty = built-in synthetic set")
    synthetic_count: int = _field(30, "number of synthetic slices when --data_path is empty")
    synthetic_size: int = _field(512, "side of the synthetic slices in pixels")
    val_split: str = _field("", "held-out slices: indices '20,21,22,23' or '20-23', or fold 'k/i' (fold i of k)")
    rgb: str = _field("convert", "RGB input: convert to gray with a warning, or refuse", ("convert", "refuse"))
    crop_size: int = _field(256, "training tile side in pixels (output of the augmentation)")
    input_scale: float = _field(
        0.5, "fixed rescale inside the augmentation map; 0.5 trains 512^2 slices at 256^2 like the ModelZoo")
    normalize: str = _field(
        "unit", "image normalisation: unit=x/255, symmetric=[-1,1], standard=zero mean unit std",
        NORMALIZE_MODES)
    weight_map: bool = _field(False, "use the U-Net border weight map w_c + w0*exp(-(d1+d2)^2/2sigma^2) in the loss "
                                     "(with --num_classes >= 2: between touching objects of the same class)")
    weight_w0: float = _field(10.0, "w0 of the border weight map")
    weight_sigma: float = _field(5.0, "sigma of the border weight map in pixels")
    # --- classes -----------------------------------------------------------------------------------------
    num_classes: int = _field(
        1, "1 = one sigmoid output (labels {0,1} or {0,255}, the membrane task); C >= 2 = softmax over C classes "
           "(labels: class ids 0..C-1, a palette PNG, or colours with --class_colors; for C = 2 a 0/255 mask is 0/1)")
    class_colors: str = _field(
        "", "colour-coded RGB labels: 'r,g,b;r,g,b;...' one triple per class in class order (one more at position "
            "--ignore_index marks unlabelled pixels), or a JSON file holding [[r,g,b], ...]; empty = integer labels")
    ignore_index: int = _field(
        -1, "label value of unlabelled pixels, left out of the loss and the metrics (C >= 2; a value >= C, "
            "e.g. 255); -1 = every pixel is labelled")
    class_weights: str = _field(
        "", "cross-entropy class weights (C >= 2): 'w0,w1,...', 'auto' (median-frequency balancing from the "
            "training set, printed at start), or empty = all 1")
    dice_background: bool = _field(
        True, "the soft Dice loss averages over every class including class 0 (false: classes 1..C-1 only; C >= 2)")
    # --- augmentation (one fused pass) -------------------------------------------------------------------
    augment: bool = _field(True, "master switch of the augmentation (off = crop/rescale only)")
    flip: bool = _field(True, "random dihedral transform (flips and 90 degree rotations)")
    rotate_deg: float = _field(15.0, "random rotation in [-r, r] degrees (0 = off)")
    scale_range: float = _field(0.1, "random zoom in [1-s, 1+s] (0 = off)")
    shear: float = _field(0.05, "random shear factor in [-s, s] (0 = off)")
    translate: float = _field(0.05, "random translation as a fraction of the tile (0 = off)")
    elastic: bool = _field(True, "U-Net elastic deformation (coarse grid, Gaussian displacements, bicubic)")
    elastic_grid: int = _field(3, "elastic control grid size (3 = the U-Net paper)")
    elastic_sigma: float = _field(10.0, "std of the elastic displacements at grid points, in pixels")
    border: str = _field("reflect", "border handling of the sampling map", ("reflect", "nearest", "constant"))
    mask_interp: str = _field(
        "nearest", "mask sampling: nearest, or bilinear then threshold at 0.5", ("nearest", "bilinear"))
    brightness: float = _field(0.1, "random brightness shift in [-b, b] (image in [0,1] units; 0 = off)")
    contrast: float = _field(0.1, "random contrast factor in [1-c, 1+c] (0 = off)")
    gamma: float = _field(0.1, "random gamma in [1-g, 1+g] (0 = off)")
    noise: float = _field(0.02, "max std of additive Gaussian noise (0 = off)")
    xla_augment: str = _field("auto", "compile the augmentation with XLA when available (on = --augment_engine "
                              "xla, off = --augment_engine graph)", ("auto", "on", "off"))
    augment_engine: str = _field(
        "auto", "augmentation engine: auto (xla where this TensorFlow compiles it, else opencv), xla, graph "
        "(plain TensorFlow ops) or opencv (cv2.remap on the host)", AUGMENT_ENGINES)
    # --- input pipeline ----------------------------------------------------------------------------------
    shuffle_buffer: int = _field(0, "shuffle buffer in slices; 0 = the whole training set (for a packed shard "
                                    "set, a smaller buffer keeps reads within a few shards at a time)")
    verify_shards: bool = _field(True, "check every shard's CRC-32 against the manifest before training from a "
                                       "packed shard set (reads the set once); false: check each shard when "
                                       "training first reads it (faster start); sizes are always checked")
    skip_bad_shards: bool = _field(False, "leave out damaged shards with a warning instead of stopping")
    prefetch: int = _field(2, "batches to prefetch")
    data_threads: int = _field(0, "private tf.data thread pool size; 0 = TensorFlow's default pool")
    data_intra_op: int = _field(1, "tf.data max_intra_op_parallelism (1 is usually fastest)")
    deterministic: bool = _field(False, "deterministic tf.data order and ops (same seed = same batches)")
    # --- model -------------------------------------------------------------------------------------------
    depth: int = _field(4, "number of down-sampling levels")
    base_filters: int = _field(64, "filters of the first level (doubles per level)")
    dropout: float = _field(0.5, "dropout rate at the two deepest levels (0 = off)")
    batch_norm: bool = _field(False, "batch normalisation after each convolution")
    # --- training ----------------------------------------------------------------------------------------
    batch_size: int = _field(2, "images per step")
    learning_rate: float = _field(1e-4, "optimizer learning rate")
    optimizer: str = _field("adam", "optimizer", ("adam", "momentum"))
    momentum: float = _field(0.9, "momentum for --optimizer momentum")
    lr_schedule: str = _field(
        "constant", "learning-rate schedule after the warm-up: constant, cosine or poly decay to 0 at the last step",
        ("constant", "cosine", "poly"))
    warmup_steps: int = _field(0, "linear learning-rate warm-up over the first N steps (0 = none)")
    ema: float = _field(0.0, "decay of an exponential moving average of the weights kept in the checkpoint "
                             "(e.g. 0.999; 0 = off)")
    weights: str = _field("ema", "weights validation and best/ use: ema (the average, when --ema > 0) or raw",
                          WEIGHT_CHOICES)
    loss: str = _field("bce", "loss: bce (cross-entropy: sigmoid for --num_classes 1, softmax for C >= 2; ce is the "
                              "same), dice (soft Dice), bce_dice (their sum; ce_dice is the same)",
                       ("bce", "dice", "bce_dice", "ce", "ce_dice"))
    train_epochs: int = _field(1, "epochs of --steps_per_epoch steps (ignored when --max_steps is set)")
    steps_per_epoch: int = _field(300, "steps per epoch (the ModelZoo uses 300)")
    max_steps: int = _field(0, "total training steps; 0 = train_epochs * steps_per_epoch")
    iterations_per_loop: int = _field(10, "training steps per Session.run (sink mode); 1 = plain loop")
    precision: str = _field(
        "fp32", "host compute precision; bf16 pays off only on hardware with bf16 arithmetic (GPU, NPU, a CPU with "
        "AVX512-BF16 or AMX) and runs slower than fp32 elsewhere; fp16 is for GPUs", PRECISIONS)
    precision_mode: str = _field("allow_mix_precision", "NPU precision_mode (passed through)", NPU_PRECISION_MODES)
    loss_scale: str = _field(
        "auto", "loss scaling: auto (dynamic for fp16, none otherwise), dynamic, none, or a fixed number")
    loss_scale_init: float = _field(2.0 ** 15, "initial dynamic loss scale")
    loss_scale_growth_interval: int = _field(2000, "finite steps before the dynamic scale doubles")
    device: str = _field("auto", "backend: auto (npu when npu_bridge imports, else host), host, npu",
                         ("auto", "host", "npu"))
    seed: int = _field(0, "seed of data order, augmentation, initialisation and dropout")
    # --- several workers (TF_CONFIG or unet_perf.launch) ----------------------------------------------------
    lr_scaling: str = _field("none", "learning rate with N workers: none (as given) or linear (x N, for the "
                             "N-times larger global batch)", ("none", "linear"))
    collective_timeout: float = _field(
        600.0, "seconds any worker waits for its peers (start-up, each Session.run, the chief's validation) "
               "before stopping with an error naming the missing worker")
    # --- outputs -----------------------------------------------------------------------------------------
    model_dir: str = _field("runs/unet", "checkpoints, TensorBoard summaries and the JSON summary")
    save_checkpoints_steps: int = _field(100, "checkpoint every N steps (a multiple of --iterations_per_loop)")
    keep_checkpoints: int = _field(5, "number of recent checkpoints to keep")
    val_every: int = _field(0, "validate every N steps (multiple of --iterations_per_loop); 0 = at the end only")
    summary_images: int = _field(2, "prediction images written to TensorBoard per summary")

    @property
    def total_steps(self):
        return self.max_steps if self.max_steps > 0 else self.train_epochs * self.steps_per_epoch

    def validate(self):
        """Raise UserError for knob combinations that cannot work; return self."""
        for name in ("batch_size", "crop_size", "iterations_per_loop", "depth", "base_filters",
                     "save_checkpoints_steps", "keep_checkpoints", "steps_per_epoch", "synthetic_count",
                     "synthetic_size", "prefetch", "elastic_grid"):
            if getattr(self, name) <= 0:
                raise UserError("--{} must be positive, got {}".format(name, getattr(self, name)))
        for name in ("max_steps", "train_epochs", "val_every", "shuffle_buffer", "data_threads", "data_intra_op",
                     "summary_images", "warmup_steps", "rotate_deg", "scale_range", "shear", "translate",
                     "brightness", "contrast", "gamma", "noise", "elastic_sigma"):
            if getattr(self, name) < 0:
                raise UserError("--{} must not be negative, got {}".format(name, getattr(self, name)))
        if self.collective_timeout <= 0:
            raise UserError("--collective_timeout must be positive, got {}".format(self.collective_timeout))
        if self.learning_rate <= 0:
            raise UserError("--learning_rate must be positive, got {}".format(self.learning_rate))
        if not 0 <= self.dropout < 1:
            raise UserError("--dropout must be in [0, 1), got {}".format(self.dropout))
        if not 0 <= self.ema < 1:
            raise UserError("--ema must be in [0, 1) (e.g. 0.999; 0 = off), got {}".format(self.ema))
        if self.input_scale <= 0:
            raise UserError("--input_scale must be positive, got {}".format(self.input_scale))
        if self.total_steps <= 0:
            raise UserError("nothing to train: set --max_steps or --train_epochs to a positive number")
        if self.warmup_steps > self.total_steps:
            raise UserError("--warmup_steps {} exceeds the {} training steps; lower it".format(
                self.warmup_steps, self.total_steps))
        multiple = 2 ** self.depth
        if self.crop_size % multiple:
            raise UserError("--crop_size {} must be divisible by 2^depth = {} (try {})".format(
                self.crop_size, multiple, max(multiple, self.crop_size // multiple * multiple)))
        k = self.iterations_per_loop
        for name in ("save_checkpoints_steps", "val_every"):
            value = getattr(self, name)
            if value and value % k:
                raise UserError("--{} {} must be a multiple of --iterations_per_loop {}".format(name, value, k))
        if self.total_steps % k:
            raise UserError("the step count {} must be a multiple of --iterations_per_loop {} (try --max_steps {})"
                            .format(self.total_steps, k, (self.total_steps // k + 1) * k))
        self._check_augment_engine()
        self._check_classes()
        self.loss_scale_kind()
        return self

    def _check_classes(self):
        from unet_perf.data.classes import MAX_CLASSES, class_weight_values, color_table

        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise UserError("--num_classes must be in [1, {}], got {}".format(MAX_CLASSES, self.num_classes))
        if self.num_classes == 1:
            for name, unset in (("class_colors", ""), ("class_weights", ""), ("ignore_index", -1)):
                if getattr(self, name) != unset:
                    raise UserError("--{} needs --num_classes >= 2 (a two-class task is --num_classes 2)".format(
                        name))
            return
        if self.ignore_index != -1 and not self.num_classes <= self.ignore_index <= MAX_CLASSES:
            raise UserError("--ignore_index {} must be -1 or a label value in [{}, {}] (0..{} are classes)".format(
                self.ignore_index, self.num_classes, MAX_CLASSES, self.num_classes - 1))
        if self.mask_interp != "nearest":
            raise UserError("--mask_interp {} would blend class ids of --num_classes {}; use --mask_interp nearest"
                            .format(self.mask_interp, self.num_classes))
        if self.weight_map and self.class_weights:
            raise UserError("--class_weights and --weight_map both weight the classes (the weight map balances "
                            "them already); drop one")
        color_table(self.class_colors, self.num_classes, self.ignore_index)
        class_weight_values(self.class_weights, self.num_classes)

    def check_resume_step(self, start_step):
        """The steps left after resuming at `start_step` must be whole Session.runs of K steps, like the total."""
        remaining = self.total_steps - start_step
        if remaining % self.iterations_per_loop:
            raise UserError("the run resumes at step {} (the checkpoint in {}): the remaining {} steps are not a "
                            "multiple of --iterations_per_loop {}; use the --iterations_per_loop of the first run"
                            .format(start_step, self.model_dir, remaining, self.iterations_per_loop))

    def _check_augment_engine(self):
        if self.augment_engine not in AUGMENT_ENGINES:
            raise UserError("--augment_engine must be one of {}, got {!r}".format(
                "|".join(AUGMENT_ENGINES), self.augment_engine))
        if self.augment_engine == "auto":
            return
        if (self.xla_augment == "on") != (self.augment_engine == "xla") and self.xla_augment != "auto":
            raise UserError("--xla_augment {} contradicts --augment_engine {}; drop --xla_augment (it is an alias: "
                            "on = xla, off = graph or opencv)".format(self.xla_augment, self.augment_engine))

    def loss_scale_kind(self):
        """('none'|'dynamic'|'fixed', fixed value or None) after resolving 'auto' against the precision."""
        text = self.loss_scale.strip().lower()
        if text == "auto":
            return ("dynamic", None) if self.precision == "fp16" else ("none", None)
        if text in ("none", "dynamic"):
            return text, None
        try:
            value = float(text)
        except ValueError:
            raise UserError("--loss_scale must be auto, dynamic, none or a number >= 1, got {!r}".format(
                self.loss_scale))
        if value < 1:
            raise UserError("--loss_scale must be >= 1, got {}".format(value))
        return "fixed", value


def str2bool(text):
    """argparse type of every boolean flag: true|false (also 1|0, yes|no, on|off, any case), else an argparse
    error naming the value."""
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError("expected true or false, got {!r}".format(text))


class _Parser(argparse.ArgumentParser):
    """argparse with the project's exit convention: one line on stderr, exit 2 (argparse already exits 2)."""

    def error(self, message):
        self.exit(2, "error: {}\n".format(message))


def build_parser(description="Train a U-Net", fields=None):
    """An argparse parser with one flag per Config field (or per name in `fields`), defaults from the dataclass,
    and --verbose (not a Config field: it only decides what TensorFlow may print, see unet_perf.tf_logging)."""
    # allow_abbrev=False: a typo such as --base_filter must be an error, not silently --base_filters.
    parser = _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                     allow_abbrev=False)
    for field in dataclasses.fields(Config):
        if fields is not None and field.name not in fields:
            continue
        kind = str2bool if field.type in (bool, "bool") else field.type
        if isinstance(kind, str):
            kind = {"int": int, "float": float, "str": str}[kind]
        parser.add_argument("--" + field.name, type=kind, default=field.default,
                            choices=field.metadata.get("choices"), help=field.metadata["help"],
                            metavar=None if kind is not str2bool else "BOOL")
    return add_verbose_flag(parser)


def config_from_args(argv=None, description="Train a U-Net"):
    """Parse argv into a validated Config (UserError on bad combinations)."""
    values = vars(build_parser(description).parse_args(argv))
    values.pop("verbose")
    return Config(**values).validate()


def config_to_dict(cfg):
    return dataclasses.asdict(cfg)
