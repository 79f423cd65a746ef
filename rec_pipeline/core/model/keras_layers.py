"""The Keras parts of the retrieval model (`retrieval.py`). Importing this module imports TensorFlow
(about 2.5 s and 600 MB), so only training imports it, through `retrieval.RetrievalModel`; inference
is numpy. TensorFlow's start-up logs are silenced unless `tensorflow_logs.SHOW` is set."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rec_pipeline.core.model import tensorflow_logs

if TYPE_CHECKING:
    from rec_pipeline.core.model.retrieval import RetrievalConfig

with tensorflow_logs.quiet():
    import keras
    import tensorflow as tf

    tf.config.list_physical_devices("GPU")  # the CUDA probe logs an error on a machine without one


class LazyAdam(keras.optimizers.Adam):
    """Adam whose update of an embedding table (sparse gradient) touches only the rows in the batch
    (moments and weights); dense gradients get the usual Adam step. Bias correction uses the
    global step count, as in TF's LazyAdam."""

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        alpha = tf.cast(learning_rate, dtype) * tf.sqrt(1 - tf.pow(tf.cast(self.beta_2, dtype), step))
        alpha = alpha / (1 - tf.pow(tf.cast(self.beta_1, dtype), step))
        rows, pos = tf.unique(gradient.indices)
        g = tf.math.unsorted_segment_sum(tf.cast(gradient.values, dtype), pos, tf.shape(rows)[0])
        k = self._get_variable_index(variable)
        m, v = self._momentums[k], self._velocities[k]
        m_rows = self.beta_1 * tf.gather(m.value, rows) + (1 - self.beta_1) * g
        v_rows = self.beta_2 * tf.gather(v.value, rows) + (1 - self.beta_2) * tf.square(g)
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        self.assign_sub(variable, tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))

class MFNet(keras.Model):
    """User/item Embedding tables (+ item bias); `train_step` computes the in-batch loss."""

    def __init__(self, n_users: int, n_items: int, config: RetrievalConfig, **kwargs: Any):
        super().__init__(**kwargs)
        self.cfg = config
        self.n_items = n_items
        self.user_emb = keras.layers.Embedding(n_users, config.dim, embeddings_initializer="zeros", name="user_emb")
        self.item_emb = keras.layers.Embedding(n_items, config.dim, embeddings_initializer="zeros", name="item_emb")
        self.item_bias = keras.layers.Embedding(n_items, 1, embeddings_initializer="zeros", name="item_bias")
        self.seed_gen = keras.random.SeedGenerator(config.seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        for layer in (self.user_emb, self.item_emb, self.item_bias):
            layer.build((None,))
        self.built = True

    def tables(self) -> dict[str, Any]:
        return {"user_emb": self.user_emb.embeddings, "item_emb": self.item_emb.embeddings,
                "item_bias": self.item_bias.embeddings}

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, inputs):  # pair scores <U_u, V_i> + b_i
        u, i = self.user_emb(inputs["u"]), self.item_emb(inputs["i"])
        return tf.reduce_sum(u * i, -1) + tf.squeeze(self.item_bias(inputs["i"]), -1)

    def train_step(self, data):
        cfg = self.cfg
        u_idx, i_idx, w = data["u"], data["i"], data["w"]
        batch = tf.shape(u_idx)[0]
        with tf.GradientTape() as tape:
            u = self.user_emb(u_idx)
            i = self.item_emb(i_idx)
            b = tf.squeeze(self.item_bias(i_idx), -1) if cfg.use_bias else tf.zeros_like(w)
            if cfg.loss == "softmax":
                logits = tf.matmul(u, i, transpose_b=True) + b[None, :]
                if cfg.logq_correction:
                    logits -= data["logq"][None, :]
                hit = tf.equal(i_idx[:, None], i_idx[None, :]) & ~tf.eye(batch, dtype=tf.bool)
                logits = tf.where(hit, tf.constant(-1e9, logits.dtype), logits)
                per_row = tf.reduce_logsumexp(logits, 1) - tf.linalg.diag_part(logits)  # CE, label = diagonal
                reg = tf.reduce_sum(tf.square(u)) + tf.reduce_sum(tf.square(i))
            else:
                neg_idx = keras.random.randint((batch, cfg.bpr_negatives), 0, self.n_items,
                                               seed=self.seed_gen, dtype="int32")
                n = self.item_emb(neg_idx)
                nb = tf.squeeze(self.item_bias(neg_idx), -1) if cfg.use_bias else 0.0
                pos = tf.reduce_sum(u * i, -1) + b
                neg = tf.einsum("bd,bkd->bk", u, n) + nb
                per_row = tf.reduce_mean(tf.nn.softplus(neg - pos[:, None]), -1)
                reg = tf.reduce_sum(tf.square(u)) + tf.reduce_sum(tf.square(i)) + tf.reduce_sum(tf.square(n))
            loss = tf.reduce_mean(w * per_row) + cfg.l2 * reg / tf.cast(batch, reg.dtype)
        variables = [self.user_emb.embeddings, self.item_emb.embeddings]
        if cfg.use_bias:
            variables.append(self.item_bias.embeddings)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}
