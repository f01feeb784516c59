"""Tiny character-level language models (flax linen) on a small corpus that ships with the code.

The corpus ``tasks/data/charlm.txt`` is the concatenated data-set descriptions bundled with
scikit-learn (BSD-3-Clause, Copyright (c) 2007-2026 The scikit-learn developers), normalized to
the 51-character ``ALPHABET`` by ``tasks/data/make_charlm_text.py``. The first ``TRAIN_FRACTION``
of the text trains; ``eval_loss`` reads fixed, evenly spaced windows of the rest.

Two models, used through ``module.init`` / ``module.apply`` as pure functions:
- ``CharMLP``: embeds a window of ``context`` characters, concatenates, one hidden layer, and
  predicts the next character (loss on the last position only).
- ``CharTransformer``: one pre-LayerNorm causal self-attention block plus MLP over learned
  position embeddings, predicting every next character in the window.
Losses are mean cross-entropy in nats per character.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ._common import digest, load_text
from .base import Task
from .mlp import softmax_cross_entropy

DATA_FILE = "charlm.txt"
ALPHABET = "\n !\"%'(),-./0123456789:;?abcdefghijklmnopqrstuvwxyz"
TRAIN_FRACTION = 0.9


@functools.cache
def load_corpus() -> np.ndarray:
    """The packaged corpus as uint8 indices into ``ALPHABET`` (read-only)."""
    text = load_text(DATA_FILE)
    table = {c: i for i, c in enumerate(ALPHABET)}
    unknown = sorted(set(text) - set(table))
    if unknown:
        raise ValueError(f"{DATA_FILE} has characters outside ALPHABET: {unknown!r}")
    ids = np.array([table[c] for c in text], np.uint8)
    ids.setflags(write=False)
    return ids


class CharMLP(nn.Module):
    """Next-character MLP over a window of embedded characters."""

    vocab: int
    embed: int
    hidden: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Logits [batch, vocab] for the character after ``tokens`` [batch, context]."""
        h = nn.Embed(self.vocab, self.embed)(tokens)
        h = h.reshape(*tokens.shape[:-1], -1)
        h = nn.gelu(nn.Dense(self.hidden)(h))
        return nn.Dense(self.vocab)(h)


class CharTransformer(nn.Module):
    """A one-layer causal transformer."""

    vocab: int
    context: int
    width: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Logits [batch, context, vocab] of each next character."""
        pos = self.param("pos", nn.initializers.normal(0.02), (self.context, self.width),
                         jnp.float32)
        h = nn.Embed(self.vocab, self.width)(tokens) + pos[: tokens.shape[-1]]
        mask = nn.make_causal_mask(tokens)
        h = h + nn.MultiHeadDotProductAttention(num_heads=self.heads)(
            nn.LayerNorm()(h), mask=mask)
        h = h + nn.Dense(self.width)(nn.gelu(nn.Dense(self.mlp)(nn.LayerNorm()(h))))
        return nn.Dense(self.vocab)(nn.LayerNorm()(h))


def corpus_config() -> dict:
    """The numbers that define the packaged corpus (file, length, split, digest)."""
    ids = load_corpus()
    return {"data": DATA_FILE, "n_chars": int(len(ids)), "train_fraction": TRAIN_FRACTION,
            "data_digest": digest(ids)}


@functools.cache
def markov_corpus(n_chars: int, lag: int, copy: float, concentration: float,
                  seed: int) -> np.ndarray:
    """A synthetic text over ``ALPHABET`` (uint8 indices, read-only): each character copies the
    one ``lag`` places back with probability ``copy`` (a dependency attention can find), and is
    otherwise drawn from a bigram table whose rows are Dirichlet(``concentration``) draws (small
    concentrations give peaked rows). Deterministic in ``seed`` (numpy's PCG64)."""
    rng = np.random.default_rng(seed)
    vocab = len(ALPHABET)
    table = np.cumsum(rng.dirichlet(np.full(vocab, concentration), size=vocab), axis=1)
    u, copies = rng.random(n_chars), rng.random(n_chars) < copy
    ids = np.zeros(n_chars, np.uint8)
    ids[:lag] = rng.integers(0, vocab, lag)
    for t in range(lag, n_chars):
        ids[t] = ids[t - lag] if copies[t] else min(
            int(np.searchsorted(table[ids[t - 1]], u[t])), vocab - 1)
    ids.setflags(write=False)
    return ids


def _make(name: str, module: nn.Module, per_position: bool, context: int, batch_size: int,
          steps: int, n_eval: int, config: dict, ids: np.ndarray, data_config: dict) -> Task:
    n_train = int(len(ids) * TRAIN_FRACTION)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    starts = np.linspace(0, len(test_ids) - context - 1, n_eval).astype(np.int64)
    eval_windows = test_ids[starts[:, None] + np.arange(context + 1)].astype(np.int32)
    offsets = np.arange(context + 1, dtype=np.int32)

    def init(key: jax.Array):
        return module.init(key, jnp.zeros((1, context), jnp.int32))["params"]

    def loss(params, batch: jax.Array) -> jax.Array:
        logits = module.apply({"params": params}, batch[:, :-1])
        targets = batch[:, 1:] if per_position else batch[:, -1]
        return softmax_cross_entropy(logits, targets)

    def batch(key: jax.Array, step: jax.Array) -> jax.Array:
        del step
        start = jax.random.randint(key, (batch_size, 1), 0, n_train - context - 1)
        return jnp.asarray(train_ids)[start + offsets].astype(jnp.int32)

    def eval_loss(params) -> jax.Array:
        return loss(params, jnp.asarray(eval_windows))

    cfg = {**config, **data_config, "context": context, "batch_size": batch_size,
           "n_eval": n_eval, "vocab": len(ALPHABET)}
    return Task(name=name, family="charlm", init=init, loss=loss, batch=batch, steps=steps,
                eval_loss=eval_loss, floor=0.0, config=cfg)


def make_charlm_mlp(name: str, context: int = 16, embed: int = 16, hidden: int = 128,
                    batch_size: int = 64, steps: int = 300, n_eval: int = 512) -> Task:
    """A next-character MLP task.

    Args:
      name: task name.
      context: characters of context.
      embed: embedding width per character.
      hidden: hidden-layer width.
      batch_size: windows per batch.
      steps: default budget.
      n_eval: held-out windows scored by ``eval_loss``.

    Returns:
      the Task.
    """
    module = CharMLP(len(ALPHABET), embed, hidden)
    config = {"model": "mlp", "embed": embed, "hidden": [hidden]}
    return _make(name, module, False, context, batch_size, steps, n_eval, config,
                 load_corpus(), corpus_config())


def make_charlm_transformer(name: str, context: int = 32, width: int = 32, heads: int = 2,
                            mlp: int = 64, batch_size: int = 32, steps: int = 300,
                            n_eval: int = 128) -> Task:
    """A one-layer causal transformer task.

    Args:
      name: task name.
      context: window length.
      width: model width.
      heads: attention heads.
      mlp: hidden width of the block's MLP.
      batch_size: windows per batch.
      steps: default budget.
      n_eval: held-out windows scored by ``eval_loss``.

    Returns:
      the Task.
    """
    module = CharTransformer(len(ALPHABET), context, width, heads, mlp)
    config = {"model": "transformer", "width": width, "heads": heads, "mlp": mlp,
              "hidden": [mlp], "layers": 1}
    return _make(name, module, True, context, batch_size, steps, n_eval, config,
                 load_corpus(), corpus_config())


def make_markov_transformer(name: str, context: int = 32, width: int = 32, heads: int = 2,
                            mlp: int = 64, batch_size: int = 32, steps: int = 200,
                            n_eval: int = 128, n_chars: int = 40_000, lag: int = 8,
                            copy: float = 0.3, concentration: float = 0.1,
                            seed: int = 0) -> Task:
    """The transformer of ``make_charlm_transformer`` on a synthetic text (``markov_corpus``):
    the model family of the held-out char-LMs on data no held-out task reads.

    Args:
      name: task name.
      context, width, heads, mlp, batch_size, steps, n_eval: as ``make_charlm_transformer``.
      n_chars, lag, copy, concentration, seed: the corpus (``markov_corpus``).

    Returns:
      the Task.
    """
    ids = markov_corpus(n_chars, lag, copy, concentration, seed)
    module = CharTransformer(len(ALPHABET), context, width, heads, mlp)
    config = {"model": "transformer", "width": width, "heads": heads, "mlp": mlp,
              "hidden": [mlp], "layers": 1}
    data = {"data": "markov", "n_chars": n_chars, "lag": lag, "copy": copy,
            "concentration": concentration, "seed": seed, "train_fraction": TRAIN_FRACTION,
            "data_digest": digest(ids)}
    return _make(name, module, True, context, batch_size, steps, n_eval, config, ids, data)
