"""BERT building blocks: embeddings, self-attention and the post-LayerNorm encoder layer.

Every parameter carries logical axis names and the main activations carry logical constraints;
which mesh axis a name maps to is decided by the rules in the run config, never here.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.model.config import ModelConfig


def bert_init(stddev: float):
    """BERT's initializer: a normal(0, stddev) truncated at two standard deviations."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * stddev

    return init


def partitioned(init, names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(init, names)


def constrain(x, names: tuple[str | None, ...]):
    return nn.with_logical_constraint(x, names)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, statistics in float32 whatever the compute dtype.

    The parameters (`scale`, `bias`), their logical names and the forward values are flax's
    nn.LayerNorm's (E[x^2] - E[x]^2 variance, the same float32 operations in the same
    order); the backward pass is the rule below, which keeps far less for it.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        features = (x.shape[-1],)
        scale = self.param("scale", partitioned(nn.initializers.ones, ("embed",)), features,
                           cfg.params_dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("embed",)), features,
                          cfg.params_dtype)
        return normalize(x, scale, bias, cfg.layer_norm_eps, jnp.dtype(cfg.compute_dtype))


def layer_norm(config: ModelConfig, name: str) -> LayerNorm:
    return LayerNorm(config, name=name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize(x, scale, bias, epsilon: float, dtype):
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis, in float32, as dtype.

    Reverse mode through flax's LayerNorm keeps three float32 tensors the size of x (x^2,
    x - mean, the normalised x) and reads them back: 12 bytes an element where the rule below
    keeps x itself (2 bytes in bf16) and two float32 numbers a row, and recomputes the
    normalised x in the backward kernel, which is memory-bound either way.
    """
    return _normalize_forward(x, scale, bias, epsilon, dtype)[0]


def _normalize_forward(x, scale, bias, epsilon, dtype):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    # max(0, .): E[x^2] - E[x]^2 can round below zero.
    var = jnp.maximum(0.0, jnp.mean(jnp.square(x32), axis=-1, keepdims=True) - jnp.square(mean))
    inv_std = jax.lax.rsqrt(var + epsilon)
    y = (x32 - mean) * (inv_std * _per_feature(scale, x)) + _per_feature(bias, x)
    return y.astype(dtype), (x, mean, inv_std, scale, bias)


def _per_feature(param, x):  # [H] -> [1, ..., 1, H] float32, to broadcast against x
    return param.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + param.shape)


def _normalize_backward(epsilon, dtype, saved, dy):
    # With n = (x - mean) * inv_std and g = dy * scale, d/dx = inv_std (g - E[g] - n E[g n]).
    del epsilon, dtype
    x, mean, inv_std, scale, bias = saved
    normalised = (x.astype(jnp.float32) - mean) * inv_std
    dy32 = dy.astype(jnp.float32)
    rows = tuple(range(x.ndim - 1))
    g = dy32 * _per_feature(scale, x)
    dx = inv_std * (g - jnp.mean(g, axis=-1, keepdims=True)
                    - normalised * jnp.mean(g * normalised, axis=-1, keepdims=True))
    dscale = jnp.sum(dy32 * normalised, axis=rows)
    dbias = jnp.sum(dy32, axis=rows)
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


normalize.defvjp(_normalize_forward, _normalize_backward)


def _dense_weights(module: nn.Module, in_shape: tuple[int, ...], features: tuple[int, ...],
                   names: tuple[str | None, ...]):
    """Declares `kernel` [*in_shape, *features] and `bias` [*features] on `module` and returns
    both in the compute dtype."""
    cfg = module.config
    kernel = module.param("kernel", partitioned(bert_init(cfg.initializer_range), names),
                          tuple(in_shape) + features, cfg.params_dtype)
    bias = module.param("bias", partitioned(nn.initializers.zeros, names[-len(features):]),
                        features, cfg.params_dtype)
    return kernel.astype(cfg.compute_dtype), bias.astype(cfg.compute_dtype)


class Dense(nn.Module):
    """y = x . kernel + bias over the trailing `in_axes` dims of x, kernel [*in, *features].

    flax's DenseGeneral stores a flat kernel and reshapes it at init, which breaks logical
    constraints on multi-axis kernels under a mesh; this one creates the kernel in its shape.
    """

    config: ModelConfig
    features: tuple[int, ...]
    names: tuple[str | None, ...]  # logical names of the kernel axes, inputs then outputs
    in_axes: int = 1

    @nn.compact
    def __call__(self, x):
        in_shape = x.shape[x.ndim - self.in_axes:]
        kernel, bias = _dense_weights(self, in_shape, self.features, self.names)
        x = x.astype(self.config.compute_dtype)
        contracting = (tuple(range(x.ndim - self.in_axes, x.ndim)), tuple(range(self.in_axes)))
        y = jax.lax.dot_general(x, kernel, (contracting, ((), ())))
        return y + bias.reshape((1,) * (y.ndim - bias.ndim) + bias.shape)


class DenseWeights(nn.Module):
    """The parameters of a Dense layer (same names and shapes) without the product, for callers
    that multiply several layers' kernels at once (the fused query/key/value projection)."""

    config: ModelConfig
    in_shape: tuple[int, ...]
    features: tuple[int, ...]
    names: tuple[str | None, ...]

    @nn.compact
    def __call__(self):
        return _dense_weights(self, self.in_shape, self.features, self.names)


def dense(config: ModelConfig, features, names, *, in_axes: int = 1, name: str) -> Dense:
    """A dense layer whose kernel axes are `names` (inputs then outputs) and bias the outputs."""
    features = (features,) if isinstance(features, int) else tuple(features)
    return Dense(config, features, tuple(names), in_axes, name=name)


_SQRT_HALF = 2.0 ** -0.5
_INV_SQRT_2PI = (2.0 * math.pi) ** -0.5


@jax.custom_jvp
def gelu(x):
    """BERT's exact GELU, x * Phi(x) = x/2 (1 + erf(x / sqrt 2)), in float32 whatever the dtype.

    Not nn.gelu(approximate=False): jax writes it with erfc, whose float32 kernel evaluates two
    approximations (a polynomial, and an exp-based tail) and divides, with its argument x / sqrt 2
    rounded in the compute dtype; in a BERT-Base bf16 step on an H200 that fusion (bias add +
    GELU, writing three [tokens, 3072] tensors for the backward pass) was the largest non-matmul
    kernel. erf is one rational approximation; the derivative rule below saves one tensor.
    """
    x32 = x.astype(jnp.float32)
    return (x32 * _normal_cdf(x32)).astype(x.dtype)


def _normal_cdf(x32):
    return 0.5 * (1.0 + jax.lax.erf(x32 * _SQRT_HALF))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    # d/dx x Phi(x) = Phi(x) + x phi(x). The slope depends on x alone, so reverse mode saves it
    # (in the compute dtype) as the one residual and the backward pass is a single multiply.
    (x,), (tangent,) = primals, tangents
    x32 = x.astype(jnp.float32)
    cdf = _normal_cdf(x32)
    slope = cdf + x32 * _INV_SQRT_2PI * jnp.exp(-0.5 * x32 * x32)
    return (x32 * cdf).astype(x.dtype), tangent * slope.astype(tangent.dtype)


class Embeddings(nn.Module):
    """Token + segment + learned position embeddings, then LayerNorm and dropout."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        init = bert_init(cfg.initializer_range)

        def embed(num, axis_name, name):
            return nn.Embed(
                num, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                embedding_init=partitioned(init, (axis_name, "embed")), name=name,
            )

        self.token_embed = embed(cfg.vocab_size, "vocab", "token_embed")
        self.position_embed = embed(cfg.max_position_embeddings, "position", "position_embed")
        self.type_embed = embed(cfg.type_vocab_size, "type", "type_embed")
        self.layer_norm = layer_norm(cfg, "layer_norm")
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        # [B, L] ids -> [B, L, H]. The lookups read the float32 tables and the sum stays in
        # float32 until LayerNorm (which normalises in float32 anyway): a lookup in the compute
        # dtype (nn.Embed's) makes the backward pass scatter-add every token's gradient into a
        # bf16 table, which loses the small contributions of frequent tokens and, on a GPU,
        # serialises on bf16 atomics (the 2-row segment table took 36% of a BERT-Base step).
        x = (
            jnp.take(self.token_embed.embedding, input_ids, axis=0)
            + jnp.take(self.position_embed.embedding, position_ids, axis=0)
            + _select_rows(self.type_embed.embedding, token_type_ids)
        )
        x = self.layer_norm(x)
        x = self.dropout(x, deterministic=deterministic)
        return constrain(x, ("batch", "length", "act_embed"))

    def attend(self, x):
        """Scores against every token embedding (the MLM decoder tied to the input matrix)."""
        return self.token_embed.attend(x)


def _select_rows(table, ids):
    """table[ids] for a table of a few rows (segments), as a select per row: its gradient is a
    reduction per row instead of a scatter-add where every token of the batch hits the same
    two rows. Exact: no matmul, so no matmul precision to worry about on TPUs."""
    lead = (1,) * ids.ndim
    rows = jnp.arange(table.shape[0], dtype=ids.dtype).reshape(lead + (-1,))
    picked = jnp.where((ids[..., None] == rows)[..., None], table.reshape(lead + table.shape),
                       jnp.zeros((), table.dtype))
    return jnp.sum(picked, axis=-2)  # [..., rows, H] -> [..., H]


def fused_attention(query, key, value, mask, implementation):
    """jax.nn.dot_product_attention; [B, L, N, K] in and out, mask bool [B, 1, L or 1, L].

    cuDNN's flash kernel takes padding as sequence lengths, which it skips, while a mask reaches
    it as a dense additive bias. A [B, 1, 1, L] mask (not packed) is padding, and the pipeline
    and tokenizers always pad at the end, so its row sums are the key lengths. A packed
    [B, 1, L, L] mask stays a mask.
    """
    if implementation == "cudnn" and mask.shape[2] == 1:
        key_lengths = jnp.sum(mask[:, 0, 0, :], axis=-1, dtype=jnp.int32)
        return jax.nn.dot_product_attention(
            query, key, value, key_value_seq_lengths=key_lengths, implementation="cudnn")
    dtype = query.dtype
    query, key, value = _float32_on_cpu_if_float16(query, key, value)
    return jax.nn.dot_product_attention(query, key, value, mask=mask,
                                        implementation=implementation).astype(dtype)


def _float32_on_cpu_if_float16(*operands):
    """The attention score's float16 operands as float32 on CPU: XLA:CPU has no float16 x
    float16 -> float32 product, which the scores take. float32 operands give the same products
    (float16's are exact in float32) and the same float32 sums; only CPUs pay for the wider
    operands, and no one trains in float16 there but tests."""
    if operands[0].dtype != jnp.float16 or jax.default_backend() != "cpu":
        return operands
    return tuple(x.astype(jnp.float32) for x in operands)


class SelfAttention(nn.Module):
    """Multi-head self-attention; the score/softmax runs in float32 whatever the compute dtype."""

    config: ModelConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x, mask):
        # x: [B, L, H]; mask: bool, broadcastable to [B, heads, L, L], True = may attend.
        cfg = self.config
        heads = (cfg.num_heads, cfg.head_dim)
        names = ("embed", "heads", "kv")
        if cfg.fused_qkv:
            query, key, value = self._fused_projections(x, heads, names)
        else:
            query = dense(cfg, heads, names, name="query")(x)  # [B, L, N, K]
            key = dense(cfg, heads, names, name="key")(x)
            value = dense(cfg, heads, names, name="value")(x)
        query = constrain(query, ("batch", "length", "act_heads", None))
        key = constrain(key, ("batch", "length", "act_heads", None))
        value = constrain(value, ("batch", "length", "act_heads", None))

        use_dropout = not self.deterministic and cfg.attention_dropout > 0.0
        if use_dropout:
            # jax.nn.dot_product_attention has no dropout on the probabilities, which BERT
            # applies; this explicit path is only taken while training with attention dropout.
            context = self._attention_with_dropout(query, key, value, mask)
        else:
            context = fused_attention(query, key, value, mask, cfg.attention_implementation)
        context = constrain(context, ("batch", "length", "act_heads", None))
        out = dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), in_axes=2, name="out")
        return out(context)  # [B, L, H]

    def _fused_projections(self, x, heads, names):
        """Query, key and value as one [H, 3H] product over the three layers' own parameters:
        one larger matmul instead of three, and in the backward pass one input gradient
        instead of three summed. Same parameters, same values up to rounding."""
        weights = [DenseWeights(self.config, (x.shape[-1],), heads, names, name=name)()
                   for name in ("query", "key", "value")]
        kernel = jnp.stack([k for k, _ in weights], axis=1)  # [H, 3, N, K]
        bias = jnp.stack([b for _, b in weights], axis=0)  # [3, N, K]
        x = x.astype(self.config.compute_dtype)
        projected = jnp.einsum("blh,hpnk->blpnk", x, kernel) + bias[None, None]  # [B, L, 3, N, K]
        return projected[:, :, 0], projected[:, :, 1], projected[:, :, 2]

    def _attention_with_dropout(self, query, key, value, mask):
        cfg = self.config
        scale = jnp.float32(cfg.head_dim) ** -0.5
        query, key = _float32_on_cpu_if_float16(query, key)
        logits = jnp.einsum(
            "bqnk,bsnk->bnqs", query, key, preferred_element_type=jnp.float32
        ) * scale  # [B, N, L, L] float32
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=False)
        return jnp.einsum("bnqs,bsnk->bqnk", probs.astype(value.dtype), value)


class EncoderLayer(nn.Module):
    """One post-LayerNorm transformer layer exactly as BERT: x = LN(x + Drop(Attn(x))), etc."""

    config: ModelConfig
    deterministic: bool
    scanned: bool = False  # nn.scan needs a (carry, output) return

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.config
        dropout = functools.partial(nn.Dropout(cfg.hidden_dropout), deterministic=self.deterministic)
        attended = SelfAttention(cfg, self.deterministic, name="attention")(x, mask)
        x = layer_norm(cfg, "attention_layer_norm")(x + dropout(attended))
        x = constrain(x, ("batch", "length", "act_embed"))

        hidden = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), name="intermediate")(x)
        hidden = constrain(gelu(hidden), ("batch", "length", "act_mlp"))  # [B, L, I]
        hidden = dense(cfg, cfg.hidden_size, ("mlp", "embed"), name="output")(hidden)
        x = layer_norm(cfg, "output_layer_norm")(x + dropout(hidden))
        x = constrain(x, ("batch", "length", "act_embed"))
        return (x, None) if self.scanned else x
