"""Experiment configuration: YAML → validated, typed objects.

An experiment is one YAML file (see README "Config reference"). ``load_config`` reads it,
applies ``--set a.b=value`` overrides, and validates everything with pydantic; an unknown key,
a wrong type or an out-of-range value is reported as a single :class:`ConfigError` line that
names the key (with a suggestion for likely typos).

Checks made when a config is read, before any data or model is built:

* the file must be UTF-8 text holding a non-empty YAML mapping, with every key at most once per
  mapping (:class:`UniqueKeyLoader`, shared with the grid files of :mod:`fedrec.bench.grid`);
* every number anywhere in the config, free-form mappings such as ``attack.params`` included,
  must be finite (:func:`check_finite`);
* ``attack.name``, ``defense.name`` and ``model.name`` must be registered names
  (:func:`check_component_name`), and ``train.metric`` must be a metric that the run evaluates
  (:func:`early_stopping_metrics`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedrec.errors import ConfigError
from fedrec.registry import suggestion
from fedrec.sections import Beta, Section, Seed

# ---------------------------------------------------------------------------- registered names

#: Default of each component name; always a registered name (checked by the tests), so a
#: config that keeps the default does not import the registry (and torch) just to check it.
_DEFAULT_NAMES = {"attack": "none", "defense": "mean", "model": "sasrec"}


def component_names(kind: Literal["attack", "defense", "model"]) -> list[str]:
    """The registered names of one kind of component.

    The registries are imported here, on first use, not when this module is imported (they
    import torch and every attack and defense module).

    Parameters
    ----------
    kind : {"attack", "defense", "model"}
        Which registry: :mod:`attacks.registry`, :mod:`defenses.registry` or
        :mod:`fedrec.models`.

    Returns
    -------
    list of str
        The names ``attack.name`` / ``defense.name`` / ``model.name`` accept.
    """
    if kind == "attack":
        from attacks.registry import attack_names

        return attack_names()
    if kind == "defense":
        from defenses.registry import DEFENSES

        return list(DEFENSES)
    from fedrec.models import all_model_names

    return all_model_names()


def check_component_name(kind: Literal["attack", "defense", "model"], value: Any) -> Any:
    """Check that ``value`` is a registered ``kind`` name; return it.

    Raises
    ------
    ConfigError
        ``"unknown attack 'dvfrs' (did you mean 'dvfsr'?); valid names: ..."`` (without the
        key: the caller's message names it).
    """
    if value == _DEFAULT_NAMES[kind]:
        return value
    names = component_names(kind)
    if value in names:
        return value
    raise ConfigError(f"unknown {kind} {value!r}{suggestion(value, names)}; valid names: "
                      f"{', '.join(names)}")


class SyntheticConfig(Section):
    """Parameters of the synthetic generator (:mod:`fedrec.data.synthetic`)."""

    n_users: int = Field(1000, ge=1)
    n_items: int = Field(500, ge=10)
    n_interests: int = Field(10, ge=1)
    mean_len: float = Field(20.0, gt=0)
    min_len: int = Field(5, ge=3)
    max_len: int = Field(200, ge=3)
    zipf_a: float = Field(1.1, ge=0)
    n_successors: int = Field(4, ge=1)
    markov: float = Field(0.7, ge=0, le=1)
    switch: float = Field(0.3, ge=0, le=1)
    interest_alpha: float = Field(0.3, gt=0)
    seed: Seed = 0
    generator: Literal["sequential", "vectorized"] = "sequential"

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        for low, high in (("min_len", "max_len"), ("min_len", "mean_len"),
                          ("n_interests", "n_items")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(self._order_error(low, high))
        return self

    def _order_error(self, low: str, high: str) -> str:
        """``low > high``, reported under the key the user set (``low`` when both or none)."""
        key, other = (high, low) if self.model_fields_set & {low, high} == {high} else (low, high)
        relation = "greater" if key == low else "less"
        default = "" if other in self.model_fields_set else ", the default"
        return (f"{key}: {getattr(self, key)} is {relation} than {other} "
                f"({getattr(self, other)}{default}), expected {low} <= {high}")


class DataConfig(Section):
    """Which dataset and how to preprocess it."""

    name: str = "synthetic"
    path: str | None = None
    format: Literal["sequences", "movielens", "pairs", "gcl4sr"] = "sequences"
    root: str | None = None
    kcore: int = Field(0, ge=0)
    min_len: int = Field(3, ge=3)
    truncate: int | None = Field(None, ge=3)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


class ModelConfig(Section):
    """Model architecture and loss."""

    name: str = "sasrec"
    hidden: int = Field(64, ge=1)
    blocks: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    layers: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    attn_dropout: float | None = Field(None, ge=0, lt=1)
    max_len: int = Field(50, ge=2)
    loss: Literal["bce", "ce"] | None = None
    n_neg: int = Field(1, ge=1)
    bce_reduction: Literal["sum", "mean"] = "sum"
    mask_prob: float = Field(0.15, gt=0, lt=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        return check_component_name("model", value)

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`fedrec.models.build_model`.

        The common fields are passed when the model accepts them; ``params`` holds
        model-specific extras (e.g. GCL4SR's loss weights) and is passed as is.
        """
        if self.name not in ("sasrec", "bert4rec", "gru4rec"):
            from fedrec.models import model_params

            accepted = set(model_params(self.name))
            common = {"hidden": self.hidden, "dropout": self.dropout, "max_len": self.max_len,
                      "blocks": self.blocks, "heads": self.heads, "layers": self.layers,
                      "attn_dropout": self.attn_dropout, "n_neg": self.n_neg,
                      "mask_prob": self.mask_prob}
            if self.loss is not None:
                common["loss_type"] = self.loss
            return {**{k: v for k, v in common.items() if k in accepted}, **self.params}
        common = {"hidden": self.hidden, "dropout": self.dropout, "max_len": self.max_len}
        if self.name == "sasrec":
            kw = {**common, "blocks": self.blocks, "heads": self.heads,
                  "attn_dropout": self.attn_dropout, "loss_type": self.loss or "bce",
                  "n_neg": self.n_neg}
        elif self.name == "bert4rec":
            kw = {**common, "blocks": self.blocks, "heads": self.heads,
                  "attn_dropout": self.attn_dropout, "mask_prob": self.mask_prob,
                  "loss_type": self.loss or "ce"}
        else:
            kw = {**common, "layers": self.layers, "loss_type": self.loss or "bce",
                  "n_neg": self.n_neg}
        return {**kw, **self.params}


class TrainConfig(Section):
    """Centralized training (``mode: centralized``)."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(5, ge=1)
    eval_every: int = Field(1, ge=1)
    #: Early-stopping metric of centralized runs, checked when the config is read against
    #: :func:`early_stopping_metrics`: for the models evaluated by :mod:`fedrec.evaluation`
    #: (SASRec, BERT4Rec, GRU4Rec, GCL4SR) ``{full|sampled}/HR@k``, ``{full|sampled}/NDCG@k``
    #: for ``k`` in ``eval.ks`` and ``{full|sampled}/MRR``, for the protocols enabled by
    #: ``eval.full`` / ``eval.sampled``. ``ER@k`` is never valid here: it is measured only on
    #: an attack's target items, i.e. in federated runs, which do not early-stop. A model with
    #: its own trainer and metric names (SASS, SITN) is checked when its class lists them
    #: (a ``metric_names(cfg)`` method), otherwise when its trainer first evaluates.
    metric: str = "full/NDCG@10"


class EvalConfig(Section):
    """Evaluation protocol (both protocols are reported by default)."""

    ks: list[int] = Field(default_factory=lambda: [5, 10, 20])
    full: bool = True
    sampled: bool = True
    n_negatives: int = Field(100, ge=1)
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    exclude_history: bool = True
    seed: Seed = 0
    batch_users: int = Field(1024, ge=1)
    #: evaluate a seeded sample of this many users (all when unset); reported as ``eval_users``
    users: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError("ks: expected a non-empty list of positive integers")
        if not (self.full or self.sampled):
            raise ValueError("full/sampled: at least one protocol must be enabled")
        return self


class FederationConfig(Section):
    """Federated training (``mode: federated``)."""

    protocol: Literal["fedsgd", "fedavg"] = "fedsgd"
    epochs: int | None = Field(3, ge=1)
    rounds: int | None = Field(None, ge=1)  # when set, overrides epochs
    clients_per_round: int = Field(256, ge=1)
    local_epochs: int = Field(1, ge=1)
    local_lr: float = Field(0.01, gt=0)
    server_lr: float = Field(1e-3, gt=0)
    server_optimizer: Literal["sgd", "adam"] = "sgd"
    server_betas: tuple[Beta, Beta] = (0.9, 0.999)
    lr_decay: float = Field(1.0, gt=0, le=1)
    lr_decay_every: int = Field(5, ge=1)
    engine: Literal["local", "flower", "distributed"] = "local"
    #: Ray actors of ``engine: distributed`` (each computes a shard of every round, batched)
    workers: int = Field(2, ge=1)
    ray_address: str = "local"
    cpus_per_client: float = Field(1.0, gt=0)
    #: Supernodes of ``engine: flower`` (None: one per participant). N: node k holds the k-th
    #: of N contiguous slices of the participants, gets one message per round listing its
    #: round clients, computes them batched and replies with their stacked updates (more than
    #: the participants: one node each). Each node reserves ``cpus_per_client`` CPUs.
    flower_nodes: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(1, ge=1)
    eval_every: int = Field(1, ge=1)
    eval_unit: Literal["epoch", "round"] = "epoch"
    client_eval: bool = False
    client_eval_fraction: float = Field(1.0, gt=0, le=1)
    max_update_norm: float | None = Field(None, gt=0)  # server guard on each update's L2 norm
    #: Converged protocol: a finished federated run directory (its ``model.pt``) or a ``.pt``
    #: file of global parameters that this run starts from (relative to the working directory).
    init_from: str | None = None
    #: Early stopping on a validation metric (e.g. ``full/NDCG@10``; None: train every round):
    #: evaluations use the validation split, the best global model is kept and tested, and
    #: training stops after ``patience`` evaluations without improvement.
    early_stop_metric: str | None = None
    patience: int = Field(3, ge=1)
    #: how per-client item-table updates travel to the server: ``dense`` tables or ``sparse``
    #: touched rows (fedrec.rowsparse.RowSparse; memory O(touched rows), same results)
    item_updates: Literal["dense", "sparse"] = "dense"

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        if self.epochs is None and self.rounds is None:
            raise ValueError("epochs/rounds: set one of them")
        return self


class TargetConfig(Section):
    """Which items the attacker promotes (also used for ER@K when no attack runs)."""

    select: Literal["least_popular", "bucket", "ids", "none"] = "least_popular"
    n: int = Field(1, ge=1)
    bucket: tuple[float, float] = (0.0, 0.1)
    ids: list[int] = Field(default_factory=list)
    seed: Seed = 0


class KnowledgeConfig(Section):
    """What the attacker knows beyond the global model and its own accounts' histories."""

    popularity: bool = False
    public_fraction: float = Field(0.0, ge=0, le=1)
    #: The aggregation rule an adaptive attacker assumes the server runs (a registered defense
    #: name; "none": no assumption). It constrains its upload to pass that rule's checks,
    #: estimated from its own benign-like updates (attacks/adaptive.py).
    defense: str = "none"
    #: Benign quantile of each checked statistic (norm, distance, angle, row norm).
    quantile: float = Field(0.5, ge=0, le=1)
    #: Multiplier of that benign statistic the attacker allows itself (1: the quantile itself).
    budget: float = Field(1.0, gt=0)

    @field_validator("defense")
    @classmethod
    def _registered(cls, value: str) -> str:
        return value if value == "none" else check_component_name("defense", value)


class AttackConfig(Section):
    """Threat model and attack."""

    name: str = "none"
    fraction: float = Field(0.001, ge=0, lt=1)
    mode: Literal["add", "replace"] = "add"
    targets: TargetConfig = Field(default_factory=TargetConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    scale: float = Field(1.0, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        return check_component_name("attack", value)


class DefenseConfig(Section):
    """Server aggregation rule.

    ``root_users`` is the size of the server's own clean data for rules that need a server
    update (FLTrust): that many benign users' training sequences, drawn with the run's seed.
    """

    name: str = "mean"
    params: dict[str, Any] = Field(default_factory=dict)
    root_users: int = Field(32, ge=1)

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        return check_component_name("defense", value)


def _multitask_config_type() -> Any:
    from fedrec.baselines.gradcraft.train import MultiTaskConfig

    return MultiTaskConfig


class ExperimentConfig(Section):
    """A whole experiment.

    ``mode: multitask`` runs the GradCraft multi-task ranking setting (its own ``multitask``
    section, :class:`fedrec.baselines.gradcraft.train.MultiTaskConfig`) instead of a sequential
    recommender.
    """

    name: str = "experiment"
    mode: Literal["centralized", "federated", "multitask"] = "centralized"
    seed: Seed = 0
    output_dir: str = "runs"
    threads: int | None = Field(None, ge=1)
    #: ``auto`` (CUDA when available) | ``cpu`` | ``cuda`` | ``cuda:N`` (:mod:`fedrec.device`)
    device: str = "cpu"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    defense: DefenseConfig = Field(default_factory=DefenseConfig)
    multitask: dict[str, Any] | None = None
    #: cross-domain / multi-scenario setting (:class:`fedrec.data.domains.DomainConfig`)
    domains: dict[str, Any] | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from fedrec.device import device_problem  # late: imports torch

        problem = device_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r}: {problem}")
        return value

    @model_validator(mode="after")
    def _check_domains(self) -> ExperimentConfig:
        if self.domains is not None:
            self.domain_config()
        return self

    def domain_config(self) -> Any:
        """The validated ``domains`` section (seed defaults to the top-level seed, the data
        folder to ``data.root``)."""
        from fedrec.data.domains import domain_config

        raw = dict(self.domains or {})
        raw.setdefault("seed", self.seed)
        if raw.get("data_dir") is None and self.data.root is not None:
            raw["data_dir"] = self.data.root
        return domain_config(raw)

    @model_validator(mode="after")
    def _check_multitask(self) -> ExperimentConfig:
        if self.multitask is not None or self.mode == "multitask":
            try:
                self.multitask_config()
            except ValidationError as exc:
                cls = _multitask_config_type()
                raise ValueError(format_validation_error(exc, cls, "", "multitask.")[2:]) from None
        return self

    def multitask_config(self) -> Any:
        """The validated ``multitask`` section (seed defaults to the top-level seed; the data
        folder to ``data.root`` / ``FEDREC_DATA``)."""
        from fedrec.data.registry import data_root

        raw = dict(self.multitask or {})
        raw.setdefault("seed", self.seed)
        if raw.get("dataset") == "ml-100k" and raw.get("data_dir") is None:
            root = data_root(self.data.root)
            if root is None:
                raise ConfigError("multitask.data_dir: not set, and neither data.root nor "
                                  "FEDREC_DATA is set; expected the folder holding ml-100k/")
            raw["data_dir"] = str(root)
        if self.threads and "num_threads" not in raw:
            raw["num_threads"] = self.threads
        return _multitask_config_type().model_validate(raw)

    @model_validator(mode="after")
    def _check_combinations(self) -> ExperimentConfig:
        if self.mode == "centralized" and self.attack.name != "none":
            raise ValueError(f"attack.name={self.attack.name!r} needs mode: federated "
                             "(a centralized run has no clients to corrupt)")
        if self.attack.name != "none" and self.attack.fraction <= 0:
            raise ValueError(f"attack.fraction={self.attack.fraction}: attack "
                             f"{self.attack.name!r} needs a positive fraction of malicious clients")
        return self

    @model_validator(mode="after")
    def _check_federated_metric(self) -> ExperimentConfig:
        metric = self.federation.early_stop_metric
        valid = metric_names(self.eval)  # what a federated evaluation reports (ER@K excluded)
        if metric is not None and metric not in valid:
            raise ValueError(f"federation.early_stop_metric: {metric!r} is not evaluated with "
                             f"these eval settings{suggestion(metric, valid)}; expected one of "
                             f"{', '.join(valid)}")
        return self

    @model_validator(mode="after")
    def _check_metric(self) -> ExperimentConfig:
        valid = early_stopping_metrics(self)
        if valid is not None and self.train.metric not in valid:
            hint = suggestion(self.train.metric, valid)
            default = "" if "metric" in self.train.model_fields_set else " (the default)"
            raise ValueError(f"train.metric: {self.train.metric!r}{default} is not evaluated "
                             f"with these eval settings{hint}; expected one of {', '.join(valid)}")
        return self


#: Models with their own trainer that still evaluate with :func:`fedrec.evaluation.evaluate`,
#: so they report :func:`metric_names`.
_STANDARD_EVALUATION = ("gcl4sr",)


def early_stopping_metrics(cfg: ExperimentConfig) -> list[str] | None:
    """The values ``train.metric`` may take in ``cfg``, or None when they are not known here.

    Only centralized runs early-stop (federated and multitask runs ignore ``train.metric``:
    None). A model trained by the generic centralized trainer, or listed in
    ``_STANDARD_EVALUATION``, reports :func:`metric_names`; a model class with a
    ``metric_names(cfg)`` method reports what it returns; any other model brings its own
    trainer and metric names, which are then checked at its first evaluation (None).
    """
    if cfg.mode != "centralized":
        return None
    if cfg.model.name == _DEFAULT_NAMES["model"] or cfg.model.name in _STANDARD_EVALUATION:
        return metric_names(cfg.eval)
    from fedrec.models import model_class

    cls = model_class(cfg.model.name)
    if hasattr(cls, "metric_names"):
        names = cls.metric_names(cfg)  # None: settings the model itself reports as wrong
        return list(names) if names is not None else None
    return None if hasattr(cls, "make_trainer") else metric_names(cfg.eval)


def metric_names(ev: EvalConfig) -> list[str]:
    """Names of the metrics an evaluation under ``ev`` reports without attack targets.

    ``{protocol}/HR@k`` and ``{protocol}/NDCG@k`` for every ``k`` in ``ev.ks``, then
    ``{protocol}/MRR``, for ``protocol`` in ``full`` and ``sampled`` when enabled (see
    :func:`fedrec.evaluation.evaluate`). ``ER@k`` is added only when attack targets exist.

    Parameters
    ----------
    ev : EvalConfig
        The evaluation protocol.

    Returns
    -------
    list of str
        Metric names in the order the evaluation reports them.
    """
    out: list[str] = []
    for protocol, enabled in (("full", ev.full), ("sampled", ev.sampled)):
        if enabled:
            for k in ev.ks:
                out += [f"{protocol}/HR@{k}", f"{protocol}/NDCG@{k}"]
            out.append(f"{protocol}/MRR")
    return out


# ---------------------------------------------------------------------------- loading


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (at any depth).

    PyYAML silently keeps the last value of a repeated key; here it is a
    :class:`yaml.constructor.ConstructorError` whose mark is the line of the second occurrence
    and whose problem names the key and the line of the first. Keys brought in by a YAML merge
    (``<<: *defaults``) may be overridden, as the YAML merge spec says.

    Scientific notation is a float as in YAML 1.2 (``1e-3``, ``1.0e30``): YAML 1.1 reads those
    as strings, which typed keys coerced but free ``params`` kept as text, so ``--set
    model.params.lr=1e-3`` was refused as "not a number".
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Construct a mapping after checking that its explicit keys are distinct."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r} (first given on line {first}), expected each key "
                    "at most once per mapping", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


UniqueKeyLoader.add_implicit_resolver(  # copies SafeLoader's table first: SafeLoader is unchanged
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with :class:`UniqueKeyLoader` (``yaml.safe_load`` plus duplicate keys)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str, flag: str = "--set",
                   example: str = "model.hidden=64") -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value parsed as YAML) into a key path and a value.

    A value that is not valid YAML is kept as a string; one that repeats a mapping key is an
    error. ``flag`` and ``example`` name the option in the error messages.
    """
    if "=" not in text:
        raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {example}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{flag} {text!r}: malformed key {key!r}")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"{flag} {text!r}: {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_key_path(raw: dict[str, Any], path: Sequence[str], value: Any, where: str) -> None:
    """Set ``raw[path[0]]...[path[-1]] = value`` in a raw config dict, creating missing sections.

    Parameters
    ----------
    raw : dict
        Raw config (modified in place).
    path : Sequence[str]
        Key path, e.g. ``["model", "hidden"]``.
    value : Any
        Value to store (not copied).
    where : str
        Prefix of the error message.

    Raises
    ------
    ConfigError
        ``"<where>: 'part' is not a section"`` when a key on the way holds a non-mapping.
    """
    node = raw
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}: {part!r} is not a section")
        node = nxt
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config dict (in place; also returned)."""
    for text in overrides:
        path, value = parse_override(text)
        set_key_path(raw, path, value, f"--set {text!r}")
    return raw


def _suggest(loc: tuple, model: type[BaseModel]) -> str:
    """A 'did you mean' hint for an unknown key at ``loc``."""
    cls: Any = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return ""
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        else:
            return ""
    names = list(getattr(cls, "model_fields", {}))
    return suggestion(loc[-1], names) or f" (valid keys: {', '.join(names)})"


def _is_key_path(model: type[BaseModel], loc: tuple, path: str) -> bool:
    """Whether dotted ``path`` names a field below the section at ``loc`` of ``model``."""
    cls: Any = model
    for part in (*loc, *path.split(".")):
        fields = getattr(cls, "model_fields", None)
        if fields is None or part not in fields:
            return False
        cls = fields[part].annotation
    return True


#: A section rule's message that starts with the key it is about: ``"min_len: ..."``.
_KEY_PREFIX = re.compile(r"([A-Za-z_][\w.]*): ")


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str = "config",
                            prefix: str = "") -> str:
    """Turn the first pydantic error into one line naming the key (``prefix`` + dotted path).

    A rule of a whole section whose message starts with a key of that section
    (``"min_len: ..."``) is reported under that key (``data.synthetic.min_len: ...``).
    """
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        key = prefix + _dotted(loc)
        return f"{source}: unknown key {key!r}{_suggest(loc, model)}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    given = err.get("input")
    quoted = isinstance(given, str) and repr(given) in msg  # the message shows it already
    shown = "" if isinstance(given, dict) or quoted else f" (got {given!r})"
    named = _KEY_PREFIX.match(msg)
    if named and err["type"] == "value_error" and _is_key_path(model, loc, named.group(1)):
        loc, msg = (*loc, *named.group(1).split(".")), msg[named.end():]
    if not loc:  # a whole-config rule: the message names the keys itself
        return f"{source}: {msg}"
    return f"{source}: {prefix}{_dotted(loc)}: {msg}{shown}"


def _dotted(loc: tuple) -> str:
    """``("federation", "server_betas", 0)`` → ``"federation.server_betas[0]"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def check_finite(value: Any, key: str = "", source: str = "config") -> None:
    """Refuse a NaN or infinite number anywhere in a raw config value.

    Walks mappings and lists, so free-form sections (``attack.params``, ``defense.params``,
    ``model.params``, ``multitask``) are checked like the typed fields.

    Parameters
    ----------
    value : Any
        A raw config (or part of one), as read from YAML.
    key : str
        Dotted key of ``value`` (list items are written ``key[i]``).
    source : str
        Prefix of the error message (the file); none when empty.

    Raises
    ------
    ConfigError
        ``"<source>: <key>: nan is not a finite number, expected a finite number"``.
    """
    if isinstance(value, float) and not math.isfinite(value):
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{key or '(top level)'}: {value} is not a finite number, "
                          "expected a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{key}.{k}" if key else str(k), source)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{key}[{i}]", source)


def validate_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a raw dict into an :class:`ExperimentConfig` (one-line ConfigError on failure)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    check_finite(raw, "", source)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, ExperimentConfig, source)) from None


def _read_text(path: Path) -> str:
    """The UTF-8 text of a config file; an undecodable byte is reported with its line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: byte {data[exc.start]:#04x} is not valid UTF-8 "
                          "text, expected a UTF-8 encoded YAML file") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an experiment config or a grid file).

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    dict
        Its top-level mapping.

    Raises
    ------
    ConfigError
        One line naming the file (and the line where there is one): missing or unreadable
        file, bytes that are not UTF-8, a YAML syntax error, a key repeated in a mapping, a
        file with no content (empty, or only comments), or a top level that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = _read_text(path)
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (no YAML content, only blank lines or "
                          "comments), expected a mapping of config keys such as "
                          "'mode: centralized'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load, override and validate an experiment config.

    Parameters
    ----------
    path : str or Path, optional
        YAML file; its stem is the default run name.
    overrides : list of str
        ``a.b=value`` strings applied after loading.
    base : dict, optional
        A raw dict to start from instead of a file.

    Raises
    ------
    ConfigError
        One line naming the offending key.
    """
    raw = dict(base or {})
    source = "config"
    if path is not None:
        raw = read_yaml(path)
        source = str(path)
        raw.setdefault("name", Path(path).stem)
    apply_overrides(raw, list(overrides or []))
    return validate_config(raw, source)


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
