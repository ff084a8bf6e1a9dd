"""Run configuration: dataclasses with the paper's defaults, named presets, YAML files, dotted overrides.

One `Config` describes a whole experiment (teacher pretraining, bagging, distillation,
evaluation). Each subcommand reads the sections it needs and saves the whole resolved
config beside its results, so a run can always be traced back to its settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bingo.errors import UserError
from bingo.zoo import resolve_checkpoint

PROTOCOLS = ("knn", "linear", "semi", "transfer")  # BINGO's evaluation protocols (arXiv 2107.01691)


@dataclass
class DataConfig:
    """Which images, at what size, and how they are loaded."""

    name: str = "imagefolder"  # fashion-mnist | cifar10 | cifar100 | stl10 | imagefolder | generated
    root: str = "data"  # folder of the data set (ImageFolder: the folder holding train/ and val/)
    image_size: int = 224  # side of the square crop fed to the networks
    channels: int = 3  # 1 (grayscale) or 3 (RGB); images are converted to this
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    eval_resize: int = 256  # evaluation transform: resize to this, centre-crop image_size
    train_subset: int = 0  # use a seeded random subset of this many training images (0: all)
    test_subset: int = 0  # likewise for the test split
    download: bool = True  # let torchvision download the data set when it is missing
    num_workers: int = 8  # loader processes of the per-image path (folders of image files)
    augment_on: str = "auto"  # device: batches augmented where the networks run (in-memory data sets) | workers:
    # each image by torchvision in loader processes | auto: device where the data set is held in memory
    decode_cache: str = ""  # imagefolder: decode every image once into a uint8 .npy in this folder (shorter side
    # resized to eval_resize, centre square kept), then augment whole batches on the device
    max_bad_images: float = 0.01  # image files that cannot be read are skipped (the next image takes their place);
    # a run stops if more than this fraction of its images cannot be read
    generated_classes: int = 10  # only for name=generated
    generated_train_size: int = 512
    generated_test_size: int = 256


@dataclass
class AugmentConfig:
    """MoCo-v2 augmentation; the strengths are tunable for small images."""

    crop_min_scale: float = 0.2
    jitter_prob: float = 0.8
    jitter_strength: float = 0.4  # brightness/contrast/saturation; hue is a quarter of it
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    flip: bool = True


@dataclass
class ModelConfig:
    """A backbone plus its projection head."""

    arch: str = "resnet18"  # torchvision ResNet name (or resnet50w2/w4/w5, SwAV's), or any timm model name
    width: int = 64  # ResNet width: stem and first stage (64 standard; SwAV's RN50w2 is 128), every stage scaled
    stem_width: int = 0  # channels of a ResNet's stem; 0: `width` (bingo files older than this field have 64)
    stem: str = "imagenet"  # imagenet (7x7/2 conv + max-pool) | cifar (3x3/1 conv, no pool) | small (3x3/2, no pool)
    head_hidden: int | None = None  # hidden width of the projection MLP; 0: a single linear layer (MoCo v1); null: the
    # method's own (BINGO's 2048; MoCo-v2's, DisCo's and SEED's the backbone's feature width: methods.resolve_defaults)
    head_bn: bool = False  # BatchNorm after the head's hidden layer (MoCo-v2 has none)
    head_bias: bool = True  # biases in the head's linear layers (MoCo v3 has none)
    head_out_bn: bool = False  # a BatchNorm without affine parameters on the embedding (MoCo v3)
    embed_dim: int = 128  # 0: no projection head (a backbone only)
    checkpoint: str = ""  # weights to load (required for a teacher)
    layout: str = "auto"  # the checkpoint's layout: auto (detected) | bingo | moco | mocov3 | swav | ... (layouts.py)

    def head_width(self) -> int:
        """The head's hidden width as built outside a method: as set, or BINGO's where left null."""
        return self.head_hidden if self.head_hidden is not None else BINGO_HEAD_WIDTH


@dataclass
class OptimConfig:
    """SGD with a cosine schedule; the learning rate is given per 256 images."""

    epochs: int = 200
    batch_size: int = 256  # global batch (divided over processes)
    lr: float = 0.03  # per 256 images; scaled linearly with batch_size
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 0  # linear learning-rate warm-up before the cosine decay


BINGO_HEAD_WIDTH = 2048  # BINGO's projection head, for every student (haohang96/bingo moco/builder.py); a head left
# null is built so outside a method (ModelConfig.head_width; methods.head_hidden gives each method its own)
MOCO_SHUFFLE_GROUP = 32  # MoCo-v2's shuffle-BN: BatchNorm over 32 images (256 on 8 GPUs, arXiv 1911.05722 Sec. 3.3)


@dataclass
class MoCoConfig:
    """MoCo-v2: momentum key encoder, queue of keys, InfoNCE."""

    queue_size: int = 65536
    temperature: float = 0.2
    momentum: float = 0.999  # key encoder EMA
    shuffle_bn_group: int | None = None  # shuffle-BN: the key batch of all processes is shuffled, and each process
    # computes its BatchNorm over groups of this many images (0: its whole share). null: the method's own, 32 for
    # MoCo-v2 and DisCo (MoCo's 8 GPUs of 32 images, emulated on any number of processes), 0 for the other methods
    split_queries: bool | None = None  # with shuffle_bn_group > 0, the student's (queries') BatchNorm over groups of as
    # many images too, as MoCo's single-GPU SplitBatchNorm on both encoders; null: true where the method's own
    # shuffle-BN is on (MoCo-v2, DisCo)

    def resolved(self, own: bool) -> MoCoConfig:
        """A copy with the settings left null set: MoCo's own shuffle-BN (`own`: MoCo-v2, DisCo) or none."""
        group = self.shuffle_bn_group if self.shuffle_bn_group is not None else MOCO_SHUFFLE_GROUP if own else 0
        split = self.split_queries if self.split_queries is not None else own and group > 0
        return dataclasses.replace(self, shuffle_bn_group=group, split_queries=split)


@dataclass
class BingoConfig:
    """BINGO loss (Xu et al., ICLR 2022, arXiv 2107.01691) and its ablation switches."""

    queue_size: int = 65536
    temperature: float = 0.2
    lam_self: float = 0.5  # weight of CE(z_a; y_a) after warm-up
    lam_other: float = 0.5  # weight of CE(z_a; y_p) after warm-up
    warmup_epochs: float = 10  # (lam_self, lam_other) = (1, 0) for these epochs (fractions allowed)
    symmetric: bool = True  # also the positive's query against both keys (L_pos)
    cutmix: bool = True  # the CutMix query (L_mix)
    cutmix_alpha: float = 2.0  # box size ~ Beta(alpha, alpha)
    keys: str = "teacher"  # teacher | momentum: keys from a momentum student (ablation, arXiv 2107.01691)
    key_momentum: float = 0.999  # EMA of the momentum student when keys=momentum


@dataclass
class SeedConfig:
    """SEED: soft cross-entropy over teacher similarities to a queue of teacher embeddings."""

    queue_size: int = 65536
    student_temperature: float = 0.2
    teacher_temperature: float = 1e-4


@dataclass
class CompressConfig:
    """CompRess: KL between teacher and student similarity distributions over memory banks."""

    bank_size: int = 128000
    temperature: float = 0.04
    momentum: float = 0.999  # the momentum student that fills the student bank (compress-2q)
    weak_view: bool = True  # one view, crop and flip only, shared with the teacher (the official code); false:
    # MoCo-v2's augmentation


@dataclass
class DiscoConfig:
    """DisCo: MoCo-v2 on the student (distill.moco) plus squared error to the teacher's embeddings."""

    weight: float = 1.0  # weight of each view's squared-error term
    # DisCo's official code sums the error over each GPU's 32 images and averages over GPUs: the term is
    # weight x images_per_sum x the mean over images, whatever the batch and the number of processes
    images_per_sum: int = 32


@dataclass
class SimRegConfig:
    """SimReg: the student backbone and an MLP predictor regress the teacher's backbone features."""

    predictor_layers: int = 4  # 4: the official F-2F-F-2F-T predictor (BN + ReLU after the 1st and 3rd layer,
    # F the student's feature width, T the teacher's); 2: F-hidden-T with BN + ReLU
    predictor_hidden: int = 2048  # the hidden width of the 2-layer predictor
    weak_view: bool = True  # one view, crop and flip only, shared with the teacher (the official recipe); false:
    # MoCo-v2's augmentation


@dataclass
class PretrainConfig:
    """`bingo pretrain`: a MoCo-v2 teacher."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=200, lr=0.03))
    moco: MoCoConfig = field(default_factory=MoCoConfig)


@dataclass
class EmbedConfig:
    """`bingo embed` (and the features behind `bingo bags`): L2-normalised backbone features to a .npy file."""

    split: str = "train"  # train | labeled | test
    dtype: str = "float32"  # float32 | float16 (half the disk and memory)
    batch_size: int = 256


@dataclass
class CacheConfig:
    """`bingo cache`: the teacher's outputs on `views` augmented views of every training image, computed once."""

    views: int = 16
    layer: str = "embedding"  # embedding (BINGO, SEED, DisCo) | features (backbone: CompRess, SimReg)
    batch_size: int = 256


@dataclass
class BagsConfig:
    """`bingo bags`: every image's bag, by a bagging strategy of BINGO (arXiv 2107.01691) or a control."""

    strategy: str = "knn"  # knn | kmeans | labels | random | student (kNN on a student's features) | self
    k: int = 5  # neighbours per image, the image itself excluded (knn, student, random)
    clusters: int = 1000  # C for kmeans
    kmeans_iters: int = 20
    features: str = ""  # a .npy file of L2-normalised features (e.g. from 'bingo embed') instead of a model
    index: str = "auto"  # exact | auto (exact up to 200k images) | a faiss index_factory string
    recall: float = 0.95  # recall@K an approximate index must reach against exact search (its effort is tuned)
    time_budget: float = 1800.0  # seconds for building and tuning an approximate index before settling
    nprobe: int = 16  # inverted lists searched by an approximate index when recall_queries=0 (no tuning)
    refine_factor: float = 10.0  # shortlist of refine_factor * K re-ranked with exact similarities (likewise)
    train_size: int = 65536  # images the approximate index is trained on
    recall_queries: int = 1000  # sampled queries the recall is measured and tuned on (0: fixed effort, unmeasured)
    report_sample: int = 10000  # anchors sampled for the similarity report
    montage_rows: int = 8  # anchors shown in montage.png


@dataclass
class DistillConfig:
    """`bingo distill`: a student trained by one method."""

    method: str = "bingo"  # bingo | moco | seed | compress-1q | compress-2q | disco | simreg
    bags: str = ""  # bag file from 'bingo bags' (methods that use bags)
    teacher_cache: str = ""  # teacher-key cache from 'bingo cache': BINGO draws its keys there, never runs the teacher
    teacher_bn: str = "eval"  # teacher BatchNorm: eval (running statistics) | train (batch statistics, shuffle-BN)
    optim: OptimConfig = field(default_factory=OptimConfig)
    bingo: BingoConfig = field(default_factory=BingoConfig)
    moco: MoCoConfig = field(default_factory=MoCoConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    disco: DiscoConfig = field(default_factory=DiscoConfig)
    simreg: SimRegConfig = field(default_factory=SimRegConfig)


@dataclass
class LinearEvalConfig:
    """The linear protocol: one linear layer on the frozen backbone (BINGO's protocol, arXiv 2107.01691)."""

    variant: str = "paper"  # paper: augmented images through the frozen backbone | fast: pre-extracted features, SGD
    # | lbfgs: pre-extracted features, logistic regression fitted to convergence (no lr; epochs: at most, iterations)
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.0  # per 256 images; 0: the protocol's default (paper: 30 for ResNets, 3 otherwise; fast: 0.1)
    weight_decay: float = 0.0


@dataclass
class SemiConfig:
    """The semi-supervised protocol: fine-tune the whole student on a class-balanced share of the labels."""

    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])
    subsets: str = ""  # subsets.json of an earlier evaluation: fine-tune on exactly those images
    seed: int = 0  # draws the subsets; not the run's seed, so every model is fine-tuned on the same images
    epochs: int = 20
    batch_size: int = 256
    lr_backbone: float = 0.005  # per 256 images
    lr_head: float = 0.5  # per 256 images
    weight_decay: float = 0.0


@dataclass
class TransferConfig:
    """The transfer protocol: the linear protocol on another data set, resized to the model's input."""

    name: str = "cifar10"  # cifar10 | cifar100 | stl10 | digits (scikit-learn's, offline) | fashion-mnist | imagefolder
    root: str = "data"
    train_subset: int = 0
    test_subset: int = 0
    download: bool = True


@dataclass
class EvalConfig:
    """`bingo eval`: BINGO's protocols (arXiv 2107.01691) on a frozen (or, for semi, fine-tuned) backbone."""

    knn_k: list[int] = field(default_factory=lambda: [10, 20, 200])
    knn_temperature: float = 0.07
    batch_size: int = 256  # feature extraction batch
    linear: LinearEvalConfig = field(default_factory=LinearEvalConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)


@dataclass
class MonitorConfig:
    """Online kNN accuracy of the network being trained, on held-out images, logged with the losses."""

    every_n_epochs: int = 0  # 0: off
    k: int = 20
    temperature: float = 0.07
    bank_size: int = 10000  # labeled training images the kNN votes come from (a seeded sample)
    queries: int = 2000  # test images classified (a seeded sample)


@dataclass
class CompareConfig:
    """`bingo compare`: runs trained and evaluated alike, over several seeds."""

    # run name -> {method: NAME (default: the run name), set: [dotted overrides]} (e.g. a variant of bingo)
    runs: dict[str, Any] = field(default_factory=lambda: {"moco": {}, "bingo": {}})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    protocols: list[str] = field(default_factory=lambda: ["knn", "linear"])  # any of knn linear semi transfer


@dataclass
class ReproConfig:
    """`bingo repro`: the paper's tables in miniature, from one teacher, a set of bag files and a pool of runs."""

    bags: dict[str, Any] = field(default_factory=dict)  # name -> {set: ['bingo bags' overrides], model: RUN}
    runs: dict[str, Any] = field(default_factory=dict)  # name -> {method, set, bags: NAME}, shared by the tables
    tables: dict[str, Any] = field(default_factory=dict)  # name -> {title, runs: [RUN ...], protocols, note, teachers}
    # name -> {checkpoint: FILE | zoo:NAME} or {preset: NAME, set: ['bingo pretrain' overrides]}: a teacher a table
    # can train its runs under (tables' `teachers`); {} is the repro teacher itself
    teachers: dict[str, Any] = field(default_factory=dict)
    intro: str = ""  # Markdown at the top of the report: what was run, how, and what was scaled down
    claims: list[Any] = field(default_factory=list)  # {claim, table, better: RUN, worse: RUN, metric, paper}
    metrics: list[str] = field(default_factory=lambda: ["linear top-1", "kNN@10 top-1"])  # claims judged on these
    teacher_protocols: list[str] = field(default_factory=lambda: ["knn", "linear"])  # the teacher's reference row


@dataclass
class DemoConfig:
    """`bingo demo`: students distilled from a shipped teacher (or one pretrained first), beside references."""

    pretrain: bool = False  # True: pretrain the teacher (the pretrain section) instead of using demo.teacher
    teacher: str = "zoo:fashion-mnist-teacher"  # the teacher when not pretraining: a zoo name or an encoder file
    methods: list[str] = field(default_factory=lambda: ["bingo", "moco", "disco"])  # students, equal epochs
    equal_time: list[str] = field(default_factory=lambda: ["moco"])  # also trained for as long as BINGO took


@dataclass
class TrainerConfig:
    """How Lightning runs: devices, precision, logging."""

    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = "auto"  # number of processes per node, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ...; torchrun and SLURM set the ranks
    precision: str = "32-true"  # 32-true | 16-mixed | bf16-mixed | auto (bf16-mixed where the GPU or CPU computes
    # bf16 natively: CUDA with bf16, or a CPU with avx512_bf16 / amx_bf16; else 32-true)
    loggers: list[str] = field(default_factory=lambda: ["csv"])  # csv | tensorboard | wandb
    log_every_n_steps: int = 50
    progress_bar: bool = True
    limit_train_batches: Any = 1.0  # fraction (or number) of batches per epoch, for smoke runs
    channels_last: bool = True  # networks and images in NHWC memory order (faster convolutions on CPU and GPU)
    checkpoint_every_minutes: float = 30.0  # also checkpoint within an epoch this often (0: at epoch ends only)


@dataclass
class Config:
    """A whole experiment: data, networks, and one section per stage."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(arch="resnet50"))
    student: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    bags: BagsConfig = field(default_factory=BagsConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    repro: ReproConfig = field(default_factory=ReproConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def preset_names() -> list[str]:
    """Names of the presets shipped with bingo."""
    folder = resources.files("bingo") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(preset: str | None = None, file: str | None = None, overrides: list[str] = (),
                stage: str | None = None, base: Config | None = None) -> Config:
    """Build a Config from defaults (or `base`), then a preset, then a YAML file, then `key=value` overrides."""
    tree = to_dict(base or Config())
    if preset:
        _merge_preset(tree, preset)
    if file:
        path = Path(file)
        if not path.is_file():
            raise UserError(f"config file {file} does not exist; check the path given to --config")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise UserError(f"config file {file} is not valid YAML ({str(err).splitlines()[0]}); correct it, or "
                            "pass another file to --config") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file {file} must hold a mapping of sections, e.g. "
                            "'distill: {optim: {lr: 0.06}}'; correct it, or pass another file to --config")
        _merge(tree, loaded, f"config file {file}")
    for item in overrides:
        _apply_override(tree, item, stage)
    cfg = from_dict(tree)
    for model in (cfg.teacher, cfg.student):  # `zoo:NAME` names a shipped model, checked against its card
        model.checkpoint = resolve_checkpoint(model.checkpoint)
    return cfg


def _merge_preset(tree: dict, preset: str) -> None:
    """Merge a named preset into `tree`; a preset may start from another one (`inherit: NAME`)."""
    if preset not in preset_names():
        raise UserError(f"unknown preset '{preset}'; choose one of: {', '.join(preset_names())}")
    values = yaml.safe_load((resources.files("bingo") / "configs" / f"{preset}.yaml").read_text()) or {}
    if "inherit" in values:
        _merge_preset(tree, values.pop("inherit"))
    _merge(tree, values, f"preset {preset}")


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts and lists (YAML/JSON-ready)."""
    return dataclasses.asdict(cfg)


def flat_settings(cfg: Config) -> dict[str, Any]:
    """Dotted key -> value of every setting of `cfg`, as read back from JSON (lists, not tuples)."""
    tree = json.loads(json.dumps(to_dict(cfg)))
    flat = {}
    for dotted in _leaf_types():
        node = tree
        for part in dotted.split("."):
            node = node[part]
        flat[dotted] = node
    return flat


def from_dict(tree: dict) -> Config:
    """Rebuild a Config from nested dicts (the inverse of to_dict)."""
    return _build(Config, tree)


def save_config(cfg: Config, folder: Path) -> Path:
    """Write the resolved config as config.yaml into a run folder."""
    path = Path(folder) / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def _build(cls: type, values: dict) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{name: _build(hints[name], value) if dataclasses.is_dataclass(hints[name]) else value
                  for name, value in values.items()})


@functools.cache
def _leaf_types(cls: type | None = None, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> declared type, for every leaf of Config."""
    types = {}
    for name, hint in typing.get_type_hints(cls or Config).items():
        if dataclasses.is_dataclass(hint):
            types.update(_leaf_types(hint, f"{prefix}{name}."))
        else:
            types[f"{prefix}{name}"] = hint
    return types


def _merge(tree: dict, update: dict, origin: str, prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in tree:
            raise UserError(f"{origin}: unknown config key '{path}'{_suggest(path)}")
        if isinstance(tree[key], dict) and path not in _leaf_types():  # a section, not a dict-valued leaf
            if not isinstance(value, dict):
                raise UserError(f"{origin}: '{path}' is a section; give it a mapping")
            _merge(tree[key], value, origin, f"{path}.")
        else:
            tree[key] = _coerce(value, path, origin)


def _apply_override(tree: dict, item: str, stage: str | None) -> None:
    if "=" not in item:
        raise UserError(f"override '{item}' must look like key=value, e.g. optim.lr=0.06")
    key, text = item.split("=", 1)
    candidates = ([f"{stage}.{key}"] if stage else []) + [key]
    types = _leaf_types()
    for dotted in candidates:
        if dotted in types:
            *sections, leaf = dotted.split(".")
            node = tree
            for part in sections:
                node = node[part]
            node[leaf] = _coerce(yaml.safe_load(text), dotted, "--set")
            return
    full = [dotted for dotted in types if dotted.endswith(f".{key}")]
    hint = f" (here give the full path: {' or '.join(full[:3])})" if full else _suggest(candidates[0])
    raise UserError(f"--set: unknown config key '{key}'{hint}")


def _coerce(value: Any, path: str, origin: str) -> Any:
    hint = _leaf_types()[path]
    union = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()  # e.g. int | None
    if hint is Any or (value is None and type(None) in union):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    allowed = tuple(t for t in union if t is not type(None)) or (typing.get_origin(hint) or hint,)
    if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
        return value
    raise UserError(f"{origin}: '{path}' expects {getattr(hint, '__name__', hint)}, got "
                    f"{json.dumps(value, default=str)}")


def _suggest(path: str) -> str:
    close = difflib.get_close_matches(path, list(_leaf_types()), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
