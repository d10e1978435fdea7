"""Training the two towers on an interaction dataset with the retrieval or the SSMTL objective."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from export.batches import HistorySampler, feature_mask, neighbour_keep, tower_inputs
from export.interactions import USER_ID, InteractionData, request_inputs
from export.objectives import MaskedReconstruction, cca_ssg_loss, retrieval_loss
from export.towers import Bag, TwoTower, UserTower
from index.manifest import FeatureSpec
from index.progress import track

OBJECTIVES = ("retrieval", "ssmtl")


class DivergedError(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    """`objective` picks the preset: `retrieval` alone, or `ssmtl` = retrieval + the fixed-weight
    `cca_weight`·CCA-SSG + `mae_weight`·masked reconstruction. `logq_weight` scales the log-q correction:
    above 1 it over-corrects, which leaves popular candidates ranked higher than the full softmax would.
    `propagation_layers` > 0 propagates the candidate id table over the train graph (see `Propagation`), with
    means or, `symmetric_propagation`, LightGCN's symmetric weights."""

    dim: int = 64
    epochs: int = 4
    batch_size: int = 1024
    lr: float = 1e-2
    temperature: float = 0.05
    seed: int = 0
    threads: int = 2
    objective: str = "retrieval"
    logq: bool = True
    logq_weight: float = 1.0
    extra_negatives: int = 0
    id_dropout: float = 0.1
    history_length: int = 32
    cca_weight: float = 0.002
    decorrelation: float = 1e-3
    feature_drop: float = 0.2
    neighbour_drop: float = 0.3
    mae_weight: float = 0.5
    mae_rate: float = 0.3
    mae_alpha: float = 3.0
    ssl_rows: int = 512
    user_id_rows: bool = True
    history_dropout: float = 0.0
    embedding_l2: float = 0.0
    propagation_layers: int = 0
    propagation_weight: float = 1.0
    symmetric_propagation: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")

    @property
    def self_supervised(self) -> bool:
        return self.objective == "ssmtl"


def _parse_bool(text: str) -> bool:
    return {"true": True, "false": False}[text.lower()]


PARSERS: dict[str, Callable[[str], object]] = {"int": int, "float": float, "str": str, "bool": _parse_bool}


def with_overrides(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """`config` with `name=value` assignments applied, each value parsed as its field's type."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        if not equals or name not in fields:
            raise ValueError(f"{assignment!r}: expected name=value with a name among {', '.join(fields)}")
        kind = str(fields[name].type)
        try:
            changes[name] = PARSERS[kind](text)
        except (KeyError, ValueError):
            raise ValueError(f"{assignment!r}: {name} takes a {kind}, not {text!r}") from None
    return dataclasses.replace(config, **changes)


def training_view(data: InteractionData, config: TrainConfig) -> InteractionData:
    """The data as the tower sees it: without `user_id_rows` the user id field leaves the request spec, so the
    tower embeds a user from the history alone (GraphSAGE-style, like LightGCN's propagated user embedding)
    and has no free per-user row to memorise the train pairs with."""
    if config.user_id_rows or data.candidates_are_users or data.feature_spec.field(USER_ID) is None:
        return data
    fields = tuple(f for f in data.feature_spec.fields if f.name != USER_ID)
    spec = FeatureSpec(fields=fields, output=data.feature_spec.output)
    return dataclasses.replace(data, feature_spec=spec)


@dataclass
class Trained:
    model: TwoTower
    config: TrainConfig
    seconds_per_epoch: float
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def user_tower(self) -> UserTower:
        return self.model.user

    def summary(self) -> dict[str, object]:
        return {
            **asdict(self.config),
            "seconds_per_epoch": round(self.seconds_per_epoch, 3),
            "epoch_losses": [round(v, 4) for v in self.epoch_losses],
        }


class Step:
    """One minibatch's loss: retrieval on (user, positive) pairs, plus the self-supervised terms."""

    def __init__(self, data: InteractionData, model: TwoTower, config: TrainConfig) -> None:
        self.data, self.model, self.config = data, model, config
        self.sampler = HistorySampler(data.train, data.num_users)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        popularity = np.bincount(data.train[:, 1], minlength=data.num_candidates) + 1.0
        expected = config.batch_size * popularity / popularity.sum()
        log_q = config.logq_weight * np.log(expected)
        self.log_q = torch.from_numpy(log_q.astype(np.float32)) if config.logq else None
        pooled = [f for f in data.feature_spec.fields if f.kind != "numeric"]
        self.history_parts = [i for i, f in enumerate(pooled) if f.name in data.history_fields]
        self.candidate_fields = [f.name for f in data.candidate_spec.fields] if data.candidate_spec else []
        self.reconstruction = MaskedReconstruction(model.user.encoder.num_parts, config.dim)

    def candidates(self, ids: np.ndarray, exclude: np.ndarray) -> torch.Tensor:
        if self.model.candidate is None:  # friend graph: a candidate is a user, embedded by the same tower
            inputs = self._inputs(ids, exclude)
            return self.model.user(*inputs)
        features = [torch.from_numpy(self.data.candidate_features[name][ids]) for name in self.candidate_fields]
        return self.model.candidate(torch.from_numpy(ids), features)

    def _inputs(self, users: np.ndarray, exclude: np.ndarray) -> list[torch.Tensor]:
        config = self.config
        return tower_inputs(
            self.data,
            users,
            self.sampler,
            exclude,
            config.history_length,
            config.id_dropout,
            self.rng,
            config.history_dropout,
        )

    def loss(self, batch: np.ndarray) -> torch.Tensor:
        config, tower = self.config, self.model.user
        self.model.candidate_ids.refresh()
        users, positives = batch[:, 0], batch[:, 1]
        looked = tower.encoder.lookup(self._inputs(users, exclude=positives))
        parts = tower.encoder.pool(looked)
        tower_rows = [torch.cat(parts, dim=-1)]
        if config.self_supervised:
            # The auxiliary tasks see the batch's first `ssl_rows` rows, a random sample: it bounds their cost
            # while keeping enough rows for CCA-SSG's per-dimension statistics. Their views and masked copies
            # join the batch's own rows in one tower pass: one large matrix product costs less than four.
            rows = config.ssl_rows
            sample = [Bag(p.rows[:rows], p.valid[:rows]) if isinstance(p, Bag) else p[:rows] for p in looked]
            views = self._views(sample)
            masked = self.reconstruction.mask([p[:rows] for p in parts], config.mae_rate, self.generator)
            tower_rows += [*views, masked.inputs]
        hidden = tower.hidden(torch.cat(tower_rows)).split([len(r) for r in tower_rows])
        embedded = nn.functional.normalize(hidden[0], dim=-1)
        # The pair's user is removed from the positive's own bag: in a friend graph it is the answer.
        positive_embeddings = self.candidates(positives, exclude=users)
        positive_ids = torch.from_numpy(positives)
        log_q = self.log_q[positive_ids] if self.log_q is not None else torch.zeros(len(batch))
        extra: dict[str, torch.Tensor] = {}
        if config.extra_negatives:
            sampled = self.rng.integers(0, self.data.num_candidates, size=config.extra_negatives)
            share = config.extra_negatives / self.data.num_candidates
            uniform = config.logq_weight * math.log(share) if config.logq else 0.0
            extra = {
                "negatives": self.candidates(sampled, exclude=np.full(len(sampled), -1)),
                "negative_ids": torch.from_numpy(sampled),
                "negative_log_q": torch.full((len(sampled),), uniform),
            }
        own = torch.from_numpy(users) if self.data.candidates_are_users else None
        loss = retrieval_loss(
            embedded, positive_embeddings, positive_ids, log_q, config.temperature, own_ids=own, **extra
        )
        if config.embedding_l2:
            loss = loss + config.embedding_l2 * self._l2(looked, positive_ids)
        if config.self_supervised:
            cca = cca_ssg_loss(hidden[1], hidden[2], config.decorrelation)
            mae = self.reconstruction.loss(hidden[3], masked, config.mae_alpha)
            loss = loss + config.cca_weight * cca + config.mae_weight * mae
        return loss

    def _l2(self, looked: list[torch.Tensor | Bag], positive_ids: torch.Tensor) -> torch.Tensor:
        """LightGCN's L2 on the batch's embedding rows: the squared norms of the rows looked up for the users
        (a bag's rows averaged) and of the positives' id rows, per pair."""
        total = self.model.candidate_ids(positive_ids).pow(2).sum(-1).mean()
        for part in looked:
            if isinstance(part, Bag):
                norms = (part.rows.pow(2).sum(-1) * part.valid).sum(1) / part.valid.sum(1).clamp(min=1.0)
                total = total + norms.mean()
            elif part.dtype.is_floating_point and part.dim() == 2 and part.shape[1] == self.config.dim:
                total = total + part.pow(2).sum(-1).mean()
        return total

    def _views(self, looked: list[torch.Tensor | Bag]) -> list[torch.Tensor]:
        """CCA-SSG's two views of the sampled users' tower input, each with neighbours dropped and feature
        dimensions masked."""
        encoder, config = self.model.user.encoder, self.config
        valid = {i: part.valid for i, part in enumerate(looked) if isinstance(part, Bag) and i in self.history_parts}
        views = []
        for _ in range(2):
            keep = neighbour_keep(valid, config.neighbour_drop, self.generator)
            concatenated = torch.cat(encoder.pool(looked, keep), dim=-1)
            views.append(concatenated * feature_mask(concatenated.shape[1], config.feature_drop, self.generator))
        return views


class Optimisation:
    """A fresh model, its minibatch loss and its optimiser: one call trains on one minibatch."""

    def __init__(self, data: InteractionData, config: TrainConfig, total_steps: int) -> None:
        torch.manual_seed(config.seed)
        self.model = TwoTower(
            data, config.dim, config.propagation_layers, config.propagation_weight, config.symmetric_propagation
        )
        self.step = Step(data, self.model, config)
        parameters = [*self.model.parameters()]
        if config.self_supervised:
            parameters += self.step.reconstruction.parameters()
        self.optimizer = torch.optim.Adam(parameters, lr=config.lr)
        # Cosine decay to a tenth of the rate: a short run still ends with small, settling steps.
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda t: 0.1 + 0.45 * (1 + math.cos(math.pi * t / total_steps))
        )

    def __call__(self, batch: np.ndarray) -> float:
        """The minibatch's loss; the parameters move only when it is finite."""
        loss = self.step.loss(batch)
        value = float(loss.detach())
        if math.isfinite(value):
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
        return value


def train(data: InteractionData, config: TrainConfig) -> Trained:
    data = training_view(data, config)
    torch.set_num_threads(config.threads)
    steps = math.ceil(len(data.train) / config.batch_size)
    optimisation = Optimisation(data, config, steps * config.epochs)
    rng = np.random.default_rng(config.seed + 1)
    losses: list[float] = []
    started = time.monotonic()
    with track(f"train {data.name} {config.objective}", total=steps * config.epochs) as progress:
        for epoch in range(config.epochs):
            order = rng.permutation(len(data.train))
            total = 0.0
            for index in range(steps):
                value = optimisation(data.train[order[index * config.batch_size : (index + 1) * config.batch_size]])
                if not math.isfinite(value):
                    raise DivergedError(
                        f"training diverged: the loss became {value} at epoch {epoch + 1}, step {index + 1}; "
                        "nothing was exported (lower the learning rate or check the features for NaN)"
                    )
                total += value
                progress.advance(note=f"epoch {epoch + 1} loss {value:.3f}")
            losses.append(total / steps)
    with torch.no_grad():
        optimisation.model.candidate_ids.refresh()
    seconds = (time.monotonic() - started) / config.epochs
    return Trained(optimisation.model.eval(), config, seconds, losses)


def step_seconds(data: InteractionData, configs: list[TrainConfig], steps: int = 20, rounds: int = 5) -> list[float]:
    """Median seconds per training step of each configuration, on the same minibatches.

    The configurations take turns, `steps` minibatches at a time for `rounds` rounds, so a machine whose
    speed drifts (other tenants, frequency scaling) slows them alike and their ratio stays fair; epochs timed
    one run after another do not have that property.
    """
    torch.set_num_threads(configs[0].threads)
    batch_size = configs[0].batch_size
    order = np.random.default_rng(configs[0].seed).permutation(len(data.train))
    batches = [data.train[order[(i * batch_size) % len(order) :][:batch_size]] for i in range(steps * rounds)]
    optimisations = [Optimisation(training_view(data, c), c, steps * rounds) for c in configs]
    timings: list[list[float]] = [[] for _ in configs]
    for round_index in range(rounds):
        for optimisation, timing in zip(optimisations, timings, strict=True):
            started = time.perf_counter()
            for batch in batches[round_index * steps : (round_index + 1) * steps]:
                optimisation(batch)
            timing.append((time.perf_counter() - started) / steps)
    return [statistics.median(t) for t in timings]


@torch.no_grad()
def candidate_embeddings(trained: Trained, data: InteractionData) -> np.ndarray:
    """Every candidate's embedding, as the index will hold it (friend graphs: each user's served embedding)."""
    data = training_view(data, trained.config)
    model = trained.model
    requests = request_inputs(data, np.arange(data.num_users)) if model.candidate is None else {}
    chunks = []
    for start in range(0, data.num_candidates, 4096):
        ids = np.arange(start, min(start + 4096, data.num_candidates))
        if model.candidate is None:
            chunks.append(model.user(*(torch.from_numpy(requests[f.name][ids]) for f in data.feature_spec.fields)))
        else:
            fields = data.candidate_spec.fields if data.candidate_spec else ()
            features = [torch.from_numpy(data.candidate_features[f.name][ids]) for f in fields]
            chunks.append(model.candidate(torch.from_numpy(ids), features))
    return np.ascontiguousarray(torch.cat(chunks).numpy(), dtype=np.float32)
