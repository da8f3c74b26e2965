"""Typed run configuration (pydantic), loaded from YAML with ``--set key=value`` overrides.

Every section forbids unknown keys, so a typo is an error that names the key. Paths are kept as
given (relative to the working directory); the resolved config is written into every run folder.
"""
from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, List, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError

_RANGES = ("scale_range", "gamma_range", "contrast_range", "brightness_range")
_PROBS = ("p_flip", "p_rot90", "p_scale", "p_gamma", "p_contrast", "p_noise", "p_brightness")


@dataclass
class AugmentConfig:
    """Augmentation parameters; every ``p_*`` is a per-sample probability (``p_flip`` per axis).

    Attributes:
        flip_axes: spatial axes (0=X, 1=Y, 2=Z) that may be mirrored.
        rot90_axes: spatial axis pairs rotated by k*90 degrees, k uniform in 0..3; a pair is
            skipped when its two patch sizes differ.
        scale_range: isotropic zoom factor about the patch centre (>1 enlarges the content); the
            patch size is kept; zooming out (< 1) pads image and label alike with their border
            values, so a structure touching a patch face keeps its label in the padding.
        gamma_range: gamma applied to each channel rescaled to [0, 1] by its min/max, then mapped back.
        contrast_range: factor multiplying each channel around its mean, clipped to its original range.
        noise_std: std of additive gaussian noise, in normalised intensity units.
        brightness_range: factor multiplying the whole sample.
    """

    flip_axes: tuple[int, ...] = (0, 1, 2)
    p_flip: float = 0.5
    rot90_axes: tuple[tuple[int, int], ...] = ((0, 1),)
    p_rot90: float = 0.5
    scale_range: tuple[float, float] = (0.9, 1.1)
    p_scale: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.3
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    noise_std: float = 0.0
    p_noise: float = 0.0
    brightness_range: tuple[float, float] = (0.9, 1.1)
    p_brightness: float = 0.0

    def __post_init__(self) -> None:
        self.flip_axes = tuple(int(a) for a in self.flip_axes)
        self.rot90_axes = tuple((int(a), int(b)) for a, b in self.rot90_axes)
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise InputError("augment.flip_axes", f"axes must be 0, 1 or 2, got {self.flip_axes}")
        if any(a not in (0, 1, 2) or b not in (0, 1, 2) or a == b for a, b in self.rot90_axes):
            raise InputError("augment.rot90_axes", f"pairs of distinct axes in 0..2 expected, got {self.rot90_axes}")
        for name in _PROBS:
            p = float(getattr(self, name))
            if not 0.0 <= p <= 1.0:
                raise InputError(f"augment.{name}", f"probability must be in [0, 1], got {p}")
            setattr(self, name, p)
        for name in _RANGES:
            lo, hi = (float(v) for v in getattr(self, name))
            if not 0.0 < lo <= hi:
                raise InputError(f"augment.{name}", f"expected 0 < low <= high, got {(lo, hi)}")
            setattr(self, name, (lo, hi))
        self.noise_std = float(self.noise_std)
        if self.noise_std < 0:
            raise InputError("augment.noise_std", f"must be >= 0, got {self.noise_std}")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """The no-op configuration (every probability 0)."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name in _PROBS})


class StrictModel(BaseModel):
    """The one base of semi3d's option models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SplitSpec(StrictModel):
    """Which cases form one split. The source is ``ids``, else the ids in ``list`` (one per line),
    else the dataset pool; ``domain`` keeps only the cases of that domain tag (or tags, see
    ``data.domains``); then ``first``/``last`` N of that order, ``random`` N (seeded), or ``fold``
    i of ``folds``: the validation cases of nnU-Net v2's cross-validation fold i (the ids sorted,
    split by its KFold with shuffling and seed 12345), so fold i holds the cases nnU-Net's fold i
    validates on when the source is the same cases (nnU-Net: every case of ``labelsTr``)."""

    ids: List[str] | None = None
    list: Path | None = None  # noqa: A003 (the YAML key users write)
    domain: str | List[str] | None = None
    first: int | None = Field(None, ge=0)
    last: int | None = Field(None, ge=0)
    random: int | None = Field(None, ge=0)
    seed: int = 0
    fold: int | None = Field(None, ge=0)
    folds: int = Field(5, ge=2)

    @model_validator(mode="after")
    def _one_selector(self) -> "SplitSpec":
        if sum(x is not None for x in (self.first, self.last, self.random, self.fold)) > 1:
            raise ValueError("use at most one of first / last / random / fold")
        if self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} of {self.folds}: folds are numbered 0..{self.folds - 1}")
        return self


class SplitsConfig(StrictModel):
    """Split resolution order: test, validation, labelled, then unlabelled = the rest of the pool
    (``unlabelled: none`` disables it). The test split is sealed: it may never overlap the others."""

    pool: SplitSpec | None = None
    labelled: SplitSpec = SplitSpec()
    validation: SplitSpec | None = None
    unlabelled: SplitSpec | Literal["rest", "none"] = "rest"
    test: SplitSpec | None = None


def axis_codes(codes: str) -> str:
    """``codes`` upper-cased when they name an orientation, one of L/R, A/P and S/I each (``"RAS"``,
    ``"lps"``, ``"PIL"``), else ValueError."""
    if not isinstance(codes, str) or sorted(codes.upper().translate(str.maketrans("LPI", "RAS"))) != ["A", "R", "S"]:
        raise ValueError(f"expected three axis codes, one of L/R, A/P and S/I each, such as 'RAS' or 'LPS'; got {codes!r}")
    return codes.upper()


class PreprocessConfig(StrictModel):
    target_spacing: tuple[float, float, float] | None = None
    scale: float | tuple[float, float, float] | None = None
    normalisation: Literal["zscore", "minmax", "ct", "none"] = "zscore"
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    ct_stats: tuple[float, float] | None = None
    # e.g. "RAS": every case's voxel axes reordered to point so (MONAI's Orientationd), predictions
    # written back in each file's own order; None keeps the files' voxel order (nnU-Net)
    orientation: str | None = None

    @field_validator("orientation")
    @classmethod
    def _axis_codes(cls, v: str | None) -> str | None:
        return None if v is None else axis_codes(v)


class DataConfig(StrictModel):
    format: Literal["nnunet", "uamt_h5", "msd", "folder"] = "nnunet"
    root: Path
    options: dict[str, Any] = {}
    num_classes: int | None = Field(None, ge=2)
    class_names: list[str] | None = None
    splits: SplitsConfig = SplitsConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    cache_dir: Path | None = None
    domains: Path | None = None  # JSON {id: tag} or write_domain_dataset's domains.json; default <root>/domains.json
    patch_size: tuple[int, int, int] = (64, 64, 48)  # voxels (X, Y, Z); multiples of the 3D net's divisor (checked at start)
    fg_oversample: float = Field(0.33, ge=0, le=1)
    augment: AugmentConfig = AugmentConfig()  # applied by data/augment.py


class NetSpec(StrictModel):
    name: str
    options: dict[str, Any] = {}


class ModelConfig(StrictModel):
    net3d: NetSpec = NetSpec(name="unet3d", options={"levels": 4, "base": 16})
    net2d: NetSpec | None = None


class MethodConfig(StrictModel):
    name: str = "supervised"
    options: dict[str, Any] = {}


class OptimConfig(StrictModel):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = 0.9
    nesterov: bool = False


class ScheduleConfig(StrictModel):
    """``poly``: lr * (1 - t/T)^power. ``cosine``: linear warm-up over ``warmup`` iterations, then
    cosine decay to ``min_factor`` within each cycle; ``cycles`` lists the iteration at which each
    cycle ends (the last one defaults to the run's end) and the lr restarts at every boundary."""

    name: Literal["constant", "poly", "cosine"] = "poly"
    power: float = 0.9
    warmup: int = Field(0, ge=0)
    cycles: list[int] = []
    min_factor: float = Field(0.0, ge=0, le=1)


class WeightAverageConfig(StrictModel):
    """An exponential moving average of the trained networks' weights (Polyak averaging), which the
    run validates, selects and saves instead of the live weights (engine/averaging.py): from
    iteration ``start`` (0-based) on, ``average = decay * average + (1 - decay) * live`` after every
    step, starting from a copy; about ``1 / (1 - decay)`` recent steps weigh in."""

    decay: float = Field(0.999, gt=0, lt=1)
    start: int = Field(0, ge=0)


class TrainConfig(StrictModel):
    iterations: int = Field(1000, ge=1)
    batch_size: int = Field(2, ge=1)
    optimizer: OptimConfig = OptimConfig()
    group_optimizers: dict[str, dict[str, Any]] = {}
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = 12.0
    channels_last: bool | None = None  # None = auto: on for CPU (see engine/precision.py)
    val_every: int = Field(200, ge=1)
    val_max_cases: int | None = None
    selection: Literal["final", "best_validation"] = "final"
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    progress_bar: bool = True
    weight_average: WeightAverageConfig | None = None  # None = off: the live weights are the model
    # TensorBoard event files in <run>/tensorboard beside log.jsonl (scalars, one validation overlay):
    # None = auto, on when the `tensorboard` package is installed; true = required; false = off
    tensorboard: bool | None = None


class InferenceConfig(StrictModel):
    overlap: float = Field(0.5, ge=0, lt=1)
    mode: Literal["gaussian", "constant"] = "gaussian"
    sw_batch_size: int = Field(2, ge=1)
    # label-map post-processing after the argmax: "largest_component" keeps each foreground class's
    # largest 26-connected component (nnU-Net's / the LA literature's single-structure prior)
    postprocess: Literal["none", "largest_component"] = "none"
    # the foreground classes "largest_component" applies to (nnU-Net decides per class); the others
    # keep every component (two kidneys, many metastases). None = every foreground class
    largest_component_classes: list[int] | None = None
    # before `postprocess`: keep only the largest 26-connected component of all foreground classes
    # together (nnU-Net's first post-processing step; one structure made of several classes, such as
    # a kidney with its tumour); `semi3d plan` sets both from the labels' connectivity,
    # `semi3d evaluate RUN --determine-postprocessing` decides both from a trained run's predictions
    largest_foreground_component: bool = False
    # mirror test-time augmentation (nnU-Net's default): the logits averaged over the flips of every
    # subset of these spatial axes (0 = X, 1 = Y, 2 = Z), 2^len passes; [] = off
    mirror_axes: list[Literal[0, 1, 2]] = []

    @field_validator("mirror_axes")
    @classmethod
    def _distinct_axes(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"axes must be distinct, got {v}")
        return v

    @field_validator("largest_component_classes")
    @classmethod
    def _foreground_classes(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v) or min(v) < 1):
            raise ValueError(f"must be distinct foreground classes (1, 2, ...; null = all of them), got {v}")
        return v


class RunConfig(StrictModel):
    name: str = "run"
    output_dir: Path = Path("runs")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    threads: int | None = None
    data: DataConfig
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``key = "a.b"``, creating dicts on the way."""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise InputError(f"--set {item}", "expected key=value")
        k, v = item.split("=", 1)
        out.append((k.strip(), yaml.safe_load(v)))
    return out


def _model_at(loc: tuple) -> Any:
    """The config model class that holds the last element of ``loc`` (None if it is no model's)."""
    model: Any = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return model


def _fields_at(loc: tuple) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model is not None else []


def _explain(err: dict, tree: dict) -> str:
    """One config error in words: the closest valid key for a typo, the expected count for a tuple."""
    import difflib

    loc = err["loc"]
    where = ".".join(str(x) for x in loc)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(valid)}"
        return f"{where}: unknown key{hint}"
    if err["type"] == "missing" and isinstance(loc[-1], int):  # a fixed-length tuple given too few values
        parent = tree
        for part in loc[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        field = ".".join(str(x) for x in loc[:-1])
        model = _model_at(loc[:-1])
        ann = model.model_fields[loc[-2]].annotation if model is not None else None
        want = len(typing.get_args(ann)) if typing.get_origin(ann) is tuple else "more"
        n = len(parent) if isinstance(parent, (list, tuple)) else "?"
        return f"{field}: expected {want} values, got {n}"
    return f"{where}: {err['msg']}"


def validate(tree: dict, source: str = "config", overrides: list[tuple[str, Any]] = ()) -> RunConfig:
    """A :class:`RunConfig` from a config tree; errors name ``source`` and, for a key set by an
    override, the ``--set`` argument it came from."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            msg = _explain(err, tree)
            loc = ".".join(str(x) for x in err["loc"])
            from_set = [k for k, _ in overrides if loc == k or loc.startswith(k + ".")]
            msgs.append(msg + (f" (from --set {from_set[-1]}=...)" if from_set else ""))
        raise InputError(source, "invalid config: " + "; ".join(msgs)) from None


def read_yaml_tree(path: str | Path) -> dict:
    """The mapping in a YAML file; an unreadable file or a non-mapping is an ``InputError``."""
    p = Path(path)
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise InputError(p, f"cannot read config: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise InputError(p, f"not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise InputError(p, "config must be a mapping")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] = (), tree: dict | None = None) -> RunConfig:
    """Load a YAML file (or a dict, left unmodified), apply ``key=value`` overrides, validate."""
    tree = read_yaml_tree(path) if tree is None else copy.deepcopy(tree)
    parsed = parse_overrides(list(overrides))
    for k, v in parsed:
        set_dotted(tree, k, v)
    return validate(tree, str(path or "config"), parsed)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
