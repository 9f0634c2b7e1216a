"""Vision Transformer (Dosovitskiy et al. 2021) in the DeiT layout (Touvron et al. 2021), named
so PaddleClas's ``DeiT_*_patch16_224`` and ``ViT_base_patch16_224`` weights load by name.

Any input size: the image is cut into ``patch_size`` x ``patch_size`` patches (a stride-p conv;
rows/columns beyond the last whole patch are dropped) and, when the patch grid differs from the
one the position embeddings were made for (``img_size // patch_size`` square), the patch
position embeddings, seen as a ``[D, G, G]`` image, are resized to the input's grid by bicubic
interpolation (``align_corners=False``, as DeiT / timm do for fine-tuning at another
resolution); the class token's embedding is kept as is.
"""

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.nn.initializer import Constant, TruncatedNormal

# size -> (embedding width, depth, heads): DeiT-Ti / DeiT-S (= ViT-S) / ViT-B (= DeiT-B).
SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}

_trunc_normal = TruncatedNormal(std=0.02)


class DropPath(nn.Layer):
    """Stochastic depth: in training, each sample's residual branch is zeroed with probability
    ``rate`` and the kept ones scaled by ``1 / (1 - rate)``; identity in eval."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x):
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = paddle.floor(keep + paddle.rand([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype))
        return x / keep * mask


class Attention(nn.Layer):
    """Multi-head self-attention on ``[N, L, D]`` tokens, scaled by ``(D / heads) ** -0.5``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias_attr=None if qkv_bias else False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape([n, length, 3, self.heads, dim // self.heads]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]  # [N, heads, L, D/heads]
        weights = self.attn_drop(F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1))
        out = paddle.matmul(weights, v).transpose([0, 2, 1, 3]).reshape([n, length, dim])
        return self.proj_drop(self.proj(out))


class Mlp(nn.Layer):
    """``fc2(drop(gelu(fc1(x))))`` then dropout; hidden width ``mlp_ratio * dim``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Layer):
    """Pre-norm transformer block: ``x + dp(attn(norm1(x)))``, then ``x + dp(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
        epsilon: float,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=epsilon)
        self.attn = Attention(dim, heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, epsilon=epsilon)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Layer):
    """``[N, 3, H, W] -> [N, (H//p) * (W//p), D]`` patch tokens, row-major over the grid."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2D(3, dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose([0, 2, 1])


class TokenPool(nn.Layer):
    """``[N, 1 + L, D]`` tokens -> ``[N, D]``: the class token (``cls``) or the mean of the L
    patch tokens (``mean``)."""

    def __init__(self, mode: str = "cls"):
        super().__init__()
        if mode not in ("cls", "mean"):
            raise ValueError(f"ViT pool must be 'cls' or 'mean'; got {mode!r}")
        self.mode = mode

    def forward(self, x):
        return x[:, 0] if self.mode == "cls" else x[:, 1:].mean(axis=1)


class ViT(nn.Layer):
    """ViT / DeiT. Input ``[N, 3, H, W]`` float32 (any H, W >= ``patch_size``); output logits
    ``[N, class_num]``.

    Children, run in this order (cut with ``recog.models.stop_layer.truncate_after``):
    ``patch_embed`` (then the class token is prepended and the position embeddings added),
    ``pos_drop``, ``blocks.0`` .. ``blocks.{depth-1}`` (``[N, 1 + L, D]`` tokens), ``norm``,
    ``pool`` (``[N, D]``: the class token, or with ``pool="mean"`` the mean of the patch tokens)
    and ``head``. Features for retrieval: stop at ``pool``.

    Args:
        size: ``tiny`` (192-d, 3 heads), ``small`` (384-d, 6 heads), ``base`` (768-d, 12 heads);
            12 blocks, MLP ratio 4, qkv bias, LayerNorm eps 1e-6 (DeiT).
        patch_size: patch side in pixels.
        img_size: the input side the position embeddings are laid out for (224 for the released
            weights); other sizes are interpolated (see the module docstring).
        class_num: classifier outputs.
        drop_path: stochastic-depth rate of the last block, rising linearly from 0 at the first.
        drop_rate, attn_drop_rate: dropout after the embeddings / in the MLP and projections, and
            on the attention weights.
        pool: ``cls`` or ``mean``, what the ``pool`` layer returns.
    """

    def __init__(
        self,
        size: str = "small",
        patch_size: int = 16,
        img_size: int = 224,
        class_num: int = 1000,
        drop_path: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        pool: str = "cls",
    ):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"ViT size must be one of {', '.join(SIZES)}; got {size!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"ViT drop_path must be in [0, 1); got {drop_path}")
        if patch_size < 1 or img_size < patch_size:
            raise ValueError(f"ViT needs 1 <= patch_size <= img_size; got {patch_size} and {img_size}")
        dim, depth, heads = SIZES[size]
        self.size, self.patch_size, self.embed_dim = size, patch_size, dim
        self.grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, dim)
        self.pos_embed = self.create_parameter([1, 1 + self.grid * self.grid, dim], default_initializer=Constant(0.0))
        self.cls_token = self.create_parameter([1, 1, dim], default_initializer=Constant(0.0))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = np.linspace(0.0, drop_path, depth)
        self.blocks = nn.LayerList(
            [Block(dim, heads, 4.0, True, drop_rate, attn_drop_rate, float(rate), 1e-6) for rate in rates]
        )
        self.norm = nn.LayerNorm(dim, epsilon=1e-6)
        self.pool = TokenPool(pool)
        self.head = nn.Linear(dim, class_num)

        _trunc_normal(self.pos_embed)
        _trunc_normal(self.cls_token)
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                _trunc_normal(layer.weight)
                if layer.bias is not None:
                    Constant(0.0)(layer.bias)

    def position_embeddings(self, grid_h: int, grid_w: int) -> paddle.Tensor:
        """``[1, 1 + grid_h * grid_w, D]``: the class token's embedding, then the patch grid's,
        bicubically resized from ``self.grid`` x ``self.grid`` when the grid differs."""
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape([1, self.grid, self.grid, self.embed_dim]).transpose([0, 3, 1, 2])
        patch_pos = F.interpolate(patch_pos, size=[grid_h, grid_w], mode="bicubic", align_corners=False)
        patch_pos = patch_pos.transpose([0, 2, 3, 1]).reshape([1, grid_h * grid_w, self.embed_dim])
        return paddle.concat([cls_pos, patch_pos], axis=1)

    def forward(self, x):
        grid_h, grid_w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        if grid_h < 1 or grid_w < 1:
            raise ValueError(f"ViT input {x.shape[2]}x{x.shape[3]} is smaller than one {self.patch_size}-pixel patch")
        for name, layer in self.named_children():
            if isinstance(layer, nn.LayerList):
                for block in layer:
                    x = block(x)
            else:
                x = layer(x)
            if name == "patch_embed":
                # Broadcast, not expand(x.shape[0]): the batch size is -1 in an exported (static) graph.
                cls = self.cls_token.astype(x.dtype) + paddle.zeros_like(x[:, :1])
                x = paddle.concat([cls, x], axis=1) + self.position_embeddings(grid_h, grid_w)
        return x
