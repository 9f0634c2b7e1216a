"""AdaMargin head: AdaFace's quality-adaptive margin (Kim et al., CVPR 2022), as PaddleClas's
``AdaMargin``."""

import math

import paddle
import paddle.nn.functional as F
from paddle import nn


class AdaMargin(nn.Layer):
    """``features [N, embedding_size] -> logits [N, class_num]``.

    The feature norm ``|z|`` stands for image quality. In training with labels, with ``mu`` and
    ``sigma`` the (EMA of the) batch mean and unbiased std of ``clip(|z|, 0.001, 100)``:
    ``zhat = clip(h * (|z| - mu) / (sigma + 1e-3), -1, 1)``, ``g_angle = -m * zhat``,
    ``g_add = m + m * zhat``; the target logit is ``s * (cos(clip(theta + g_angle, 1e-3, pi - 1e-3)) - g_add)``
    and the others ``s * cos(theta)``, where ``cos(theta)`` (the cosine to the class centre,
    clipped to ``[-1 + 1e-3, 1 - 1e-3]``) uses the columns of ``kernel [embedding_size, class_num]``
    (PaddleClas's name, so its weights load by name). ``zhat`` is treated as a constant
    (no gradient through the norms' statistics). High-quality samples (large norm) get an
    ArcFace-like angular margin, low-quality ones a CosFace-like additive one.

    The buffers ``batch_mean`` (starts at 20) and ``batch_std`` (100) are updated every training
    call: ``new = t_alpha * batch_stat + (1 - t_alpha) * old`` (``t_alpha=1``: this batch's).
    A batch of one sample has std 0 (not NaN).

    Without labels or in eval mode the plain cosine ``[N, class_num]`` is returned, like recog's
    other margin heads (PaddleClas's returns the features unchanged there).
    """

    eps = 1e-3

    def __init__(
        self,
        embedding_size: int,
        class_num: int,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= t_alpha <= 1.0:
            raise ValueError(f"AdaMargin t_alpha must be in [0, 1]; got {t_alpha}")
        self.embedding_size, self.class_num = embedding_size, class_num
        self.m, self.h, self.s, self.t_alpha = m, h, s, t_alpha
        # Uniform in [-1, 1], each class centre then scaled to unit norm (as PaddleClas initialises it).
        init = paddle.uniform([embedding_size, class_num], min=-1.0, max=1.0)
        norm = paddle.norm(init, p=2, axis=0, keepdim=True)
        init = init / paddle.where(norm > 1e-5, norm, paddle.ones_like(norm))
        self.kernel = self.create_parameter(
            [embedding_size, class_num], default_initializer=nn.initializer.Assign(init)
        )
        self.register_buffer("t", paddle.zeros([1]), persistable=True)  # unused; in PaddleClas's weight files
        self.register_buffer("batch_mean", paddle.full([1], 20.0), persistable=True)
        self.register_buffer("batch_std", paddle.full([1], 100.0), persistable=True)

    def forward(self, features: paddle.Tensor, labels: paddle.Tensor | None = None) -> paddle.Tensor:
        norms = paddle.norm(features, p=2, axis=1, keepdim=True)  # [N, 1]
        cos = paddle.matmul(features / norms, F.normalize(self.kernel, axis=0))
        if labels is None or not self.training:
            return cos
        cos = paddle.clip(cos, -1.0 + self.eps, 1.0 - self.eps)
        safe_norms = paddle.clip(norms, min=0.001, max=100.0).detach()
        with paddle.no_grad():
            std = safe_norms.std() if safe_norms.shape[0] > 1 else paddle.zeros([])
            paddle.assign(self.t_alpha * safe_norms.mean() + (1.0 - self.t_alpha) * self.batch_mean, self.batch_mean)
            paddle.assign(self.t_alpha * std + (1.0 - self.t_alpha) * self.batch_std, self.batch_std)
        zhat = paddle.clip(self.h * (safe_norms - self.batch_mean) / (self.batch_std + self.eps), -1.0, 1.0)
        one_hot = F.one_hot(labels.reshape([-1]).astype("int64"), self.class_num)
        theta = paddle.acos(cos)
        theta = paddle.clip(theta + one_hot * (-self.m * zhat), min=self.eps, max=math.pi - self.eps)
        return self.s * (paddle.cos(theta) - one_hot * (self.m + self.m * zhat))
