"""A small TinyGPT-V in PyTorch with the real model's topology and parameter names.

  image [3,S,S] -> EVA ViT (patch conv + CLS + abs pos, pre-norm blocks, qkv without bias plus
  q_bias/v_bias, exact GELU, LN eps 1e-6, no final norm) -> ln_vision (eps 1e-5)
  -> Q-Former (learned queries, embeddings LayerNorm eps 1e-12, post-LN BERT layers, cross-attention
  to all image tokens in layers 0, 2, ..., the query FFN) -> llama_proj -> llama_proj2 (no activation)
  -> spliced at <ImageHere> into a Phi-2 style decoder (one input LayerNorm feeding attention and MLP
  in parallel, fused per-head-interleaved query_key_value, q/k LayerNorm over head_dim before partial
  NeoX RoPE, RMSNorm eps 1e-6 on the attention output, gelu_new MLP, final LayerNorm, lm_head + bias).

The state dict keys are those of the TinyGPT-V model object without LoRA:
  visual_encoder.*, ln_vision.*, query_tokens, Qformer.bert.*, llama_proj*, llama_model.model.*,
  llama_model.lm_head.*
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class DemoConfig:
    image_size: int = 96
    patch_size: int = 16
    vit_width: int = 128
    vit_depth: int = 4          # blocks used; the exported file holds one more, unused
    vit_heads: int = 2          # head dim 64 everywhere
    vit_mlp: int = 512
    qf_width: int = 128
    qf_layers: int = 2
    qf_heads: int = 2
    qf_ffn: int = 512
    n_query: int = 16
    cross_freq: int = 2
    proj_inner: int = 256       # llama_proj output width (4096 in the real model)
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 2
    n_ffn: int = 512
    rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    vocab_size: int = 512
    max_position: int = 512

    def to_dict(self):
        return asdict(self)


# ---------------------------------------------------------------- vision (EVA ViT)

class PatchEmbed(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, c.vit_width, c.patch_size, c.patch_size)  # [W, 3, p, p] + bias

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class EvaAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)   # [3W, W]
        self.q_bias = nn.Parameter(torch.zeros(dim))     # [W]
        self.v_bias = nn.Parameter(torch.zeros(dim))     # [W]
        self.proj = nn.Linear(dim, dim)                  # [W, W] + bias

    def forward(self, x):
        B, N, C = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class EvaMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class EvaBlock(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.vit_width, eps=1e-6)
        self.attn = EvaAttention(c.vit_width, c.vit_heads)
        self.norm2 = nn.LayerNorm(c.vit_width, eps=1e-6)
        self.mlp = EvaMlp(c.vit_width, c.vit_mlp)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, c: DemoConfig, depth: int | None = None):
        super().__init__()
        n = (c.image_size // c.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.vit_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, c.vit_width))
        self.patch_embed = PatchEmbed(c)
        self.blocks = nn.ModuleList(EvaBlock(c) for _ in range(depth or c.vit_depth))

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for b in self.blocks:
            x = b(x)
        return x


# ---------------------------------------------------------------- Q-Former (BERT, query path only)

class BertSelfAttention(nn.Module):
    def __init__(self, dim: int, kv_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)

    def forward(self, h, ctx):
        B, T, C = h.shape
        hd = C // self.heads
        q = self.query(h).view(B, T, self.heads, hd).transpose(1, 2)
        k = self.key(ctx).view(B, -1, self.heads, hd).transpose(1, 2)
        v = self.value(ctx).view(B, -1, self.heads, hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        return o.transpose(1, 2).reshape(B, T, C)


class BertOutput(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.dense = nn.Linear(in_dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, dim: int, kv_dim: int, heads: int):
        super().__init__()
        self.add_module("self", BertSelfAttention(dim, kv_dim, heads))
        self.output = BertOutput(dim, dim)

    def forward(self, h, ctx):
        return self.output(self._modules["self"](h, ctx), h)


class BertDense(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.dense = nn.Linear(in_dim, out_dim)


class QFormerLayer(nn.Module):
    def __init__(self, c: DemoConfig, cross: bool):
        super().__init__()
        self.attention = BertAttention(c.qf_width, c.qf_width, c.qf_heads)
        if cross:
            self.crossattention = BertAttention(c.qf_width, c.vit_width, c.qf_heads)
        self.intermediate_query = BertDense(c.qf_width, c.qf_ffn)
        self.output_query = BertOutput(c.qf_ffn, c.qf_width)

    def forward(self, h, image):
        h = self.attention(h, h)
        if hasattr(self, "crossattention"):
            h = self.crossattention(h, image)
        f = F.gelu(self.intermediate_query.dense(h))
        return self.output_query(f, h)


class BertEmbeddings(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)


class BertEncoder(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.layer = nn.ModuleList(QFormerLayer(c, l % c.cross_freq == 0) for l in range(c.qf_layers))


class Bert(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(c.qf_width)
        self.encoder = BertEncoder(c)


class QFormer(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.bert = Bert(c)

    def forward(self, queries, image):
        h = self.bert.embeddings.LayerNorm(queries)
        for layer in self.bert.encoder.layer:
            h = layer(h, image)
        return h


# ---------------------------------------------------------------- Phi-2 (4.36 layout + TinyGPT-V norms)

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def head_layernorm(dim: int) -> nn.LayerNorm:
    """q/k LayerNorm over head_dim. Only its weight is trained (the bias stays 0, as in TinyGPT-V)."""
    ln = nn.LayerNorm(dim, eps=1e-5)
    ln.bias.requires_grad_(False)
    return ln


def rope_cos_sin(n_pos: int, rot: int, theta: float, device=None):
    inv = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.float32, device=device) / rot))
    t = torch.arange(n_pos, dtype=torch.float32, device=device)
    f = torch.outer(t, inv)
    emb = torch.cat([f, f], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin, rot: int):
    """NeoX rotate-half on the first `rot` dims of x [B, H, T, hd]."""
    xr, xp = x[..., :rot], x[..., rot:]
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return torch.cat([xr * cos + rotated * sin, xp], dim=-1)


class PhiAttention(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.heads = c.n_head
        self.hd = c.n_embd // c.n_head
        self.rot = int(c.rotary_factor * self.hd)
        self.query_key_value = nn.Linear(c.n_embd, 3 * c.n_embd)   # rows [head][q,k,v][d]
        self.q_layernorm = head_layernorm(self.hd)
        self.k_layernorm = head_layernorm(self.hd)
        self.dense = nn.Linear(c.n_embd, c.n_embd)

    def forward(self, h, cos, sin):
        B, T, C = h.shape
        qkv = self.query_key_value(h).view(B, T, self.heads, 3, self.hd)
        q = self.q_layernorm(qkv[..., 0, :]).transpose(1, 2)
        k = self.k_layernorm(qkv[..., 1, :]).transpose(1, 2)
        v = qkv[..., 2, :].transpose(1, 2)
        q = apply_rope(q, cos, sin, self.rot)
        k = apply_rope(k, cos, sin, self.rot)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.dense(o.transpose(1, 2).reshape(B, T, C))


class PhiMLP(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.n_embd, c.n_ffn)
        self.fc2 = nn.Linear(c.n_ffn, c.n_embd)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class PhiLayer(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(c.n_embd, eps=1e-5)
        self.self_attn = PhiAttention(c)
        self.post_layernorm = RMSNorm(c.n_embd, eps=1e-6)
        self.mlp = PhiMLP(c)

    def forward(self, x, cos, sin):
        h = self.input_layernorm(x)
        return x + self.post_layernorm(self.self_attn(h, cos, sin)) + self.mlp(h)


class PhiModel(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.n_embd)
        self.layers = nn.ModuleList(PhiLayer(c) for _ in range(c.n_layer))
        self.final_layernorm = nn.LayerNorm(c.n_embd, eps=1e-5)


class PhiForCausalLM(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.c = c
        self.model = PhiModel(c)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size)

    def forward(self, emb):
        c = self.c
        cos, sin = rope_cos_sin(emb.shape[1], int(c.rotary_factor * (c.n_embd // c.n_head)), c.rope_theta,
                                emb.device)
        x = emb
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.model.final_layernorm(x))


# ---------------------------------------------------------------- the whole model

class TinyGPTVDemo(nn.Module):
    def __init__(self, c: DemoConfig):
        super().__init__()
        self.c = c
        self.visual_encoder = VisionTransformer(c)
        self.ln_vision = nn.LayerNorm(c.vit_width, eps=1e-5)
        self.query_tokens = nn.Parameter(torch.zeros(1, c.n_query, c.qf_width))
        self.Qformer = QFormer(c)
        self.llama_proj = nn.Linear(c.qf_width, c.proj_inner)
        self.llama_proj2 = nn.Linear(c.proj_inner, c.n_embd)
        self.llama_model = PhiForCausalLM(c)
        self._init_weights()

    def _init_weights(self):
        """Decoder: N(0, 0.02). Vision side (ViT, Q-Former, llama_proj): unit-gain N(0, 1/fan_in), so
        that picture content reaches the decoder strongly from the first step; llama_proj2 N(0, 0.02)."""
        g = torch.Generator().manual_seed(0)
        for name, p in self.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "norm" in name or "ln_" in name:
                continue
            std = 0.02
            if name == "visual_encoder.pos_embed":
                std = 1.0       # as strong as the patch content, so queries can find their cell at once
            elif p.ndim >= 2 and name.startswith(("visual_encoder.blocks", "visual_encoder.patch_embed",
                                                 "Qformer.", "llama_proj.")):
                std = (p[0].numel()) ** -0.5
            p.data.copy_(torch.randn(p.shape, generator=g) * std)

    def encode_image(self, pixels):
        """pixels [B,3,S,S] (CLIP-normalised) -> [B, n_query, n_embd] embeddings for the decoder."""
        e = self.ln_vision(self.visual_encoder(pixels))
        q = self.Qformer(self.query_tokens.expand(pixels.shape[0], -1, -1), e)
        return self.llama_proj2(self.llama_proj(q))

    def forward(self, img_emb, before_ids, after_ids):
        """img_emb [B,nq,D]; before_ids [L0] shared prefix; after_ids [B,L1] -> logits [B, L0+nq+L1, V]."""
        B = img_emb.shape[0]
        emb = self.llama_model.model.embed_tokens
        x = torch.cat([emb(before_ids).unsqueeze(0).expand(B, -1, -1), img_emb, emb(after_ids)], dim=1)
        return self.llama_model(x)


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def pil_to_tensor(img, size: int) -> torch.Tensor:
    """PIL image -> CLIP-normalised [3,S,S] (bicubic square resize when the size differs)."""
    from PIL import Image
    import numpy as np
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (a - mean) / std
