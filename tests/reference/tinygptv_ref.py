"""A PyTorch reference of TinyGPT-V's forward pass, written from the architecture spec, for tests only.

It reads the original checkpoint files itself (never the converter's output or code):
- vision: transformers' Blip2VisionModel with the EVA weights mapped (HF's fused qkv bias =
  cat(q_bias, 0, v_bias)); its post_layernorm is replaced by ln_vision with eps 1e-5 (HF uses 1e-6);
  the position embedding is interpolated here (bicubic, align_corners=False, float32, CLS kept);
- Q-Former: transformers' Blip2QFormerModel (query-only path), eps 1e-12;
- projector: llama_proj then llama_proj2, no activation;
- language model: transformers' PhiForCausalLM with qk_layernorm=True (q/k LayerNorm before RoPE),
  plus a LlamaRMSNorm (eps 1e-6) on the attention output via a forward hook, the stage file's norm
  weights, and LoRA either merged into the weights or applied unmerged (W x + s * B(A x)) via hooks.

Usage:
    ref = TinyGPTVReference(phi2_dir, eva, blip2, stage_file, vision_heads=3, qformer_heads=2)
    emb = ref.image_embeddings(pixels)                 # pixels [3,S,S] or [B,3,S,S] -> [n_query, n_embd]
    logits = ref.logits(token_ids, pixels, image_at)   # [len(ids) + n_query, n_vocab]
    x = preprocess(pil_image, size)                    # [3,S,S] float32 (PIL bicubic + CLIP mean/std)
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(image, size):
    """Blip2ImageEvalProcessor: RGB, Resize((S, S), BICUBIC) on the PIL image, ToTensor, Normalize."""
    from PIL import Image
    img = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _phi_base_weights(folder):
    """The base Phi-2 weights in transformers' >= 4.37 names, from any of the three layouts."""
    from safetensors.torch import load_file
    cfg = json.load(open(os.path.join(folder, "config.json")))
    sd = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        if name.endswith(".safetensors"):
            sd.update(load_file(p))
        elif name.endswith(".bin"):
            sd.update(_load(p))
    sd = {k: v.float() for k, v in sd.items()}
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    out = {}
    if any("mixer.Wqkv" in k for k in sd):   # Microsoft's layout
        out["model.embed_tokens.weight"] = sd["transformer.embd.wte.weight"]
        n = len({k.split(".")[2] for k in sd if k.startswith("transformer.h.")})
        for i in range(n):
            s, d = f"transformer.h.{i}.", f"model.layers.{i}."
            for wb in ("weight", "bias"):
                q, k, v = sd[s + "mixer.Wqkv." + wb].chunk(3, dim=0)
                out[d + "self_attn.q_proj." + wb], out[d + "self_attn.k_proj." + wb], out[d + "self_attn.v_proj." + wb] = q, k, v
                out[d + "input_layernorm." + wb] = sd[s + "ln." + wb]
                out[d + "self_attn.dense." + wb] = sd[s + "mixer.out_proj." + wb]
                out[d + "mlp.fc1." + wb] = sd[s + "mlp.fc1." + wb]
                out[d + "mlp.fc2." + wb] = sd[s + "mlp.fc2." + wb]
        for wb in ("weight", "bias"):
            out["model.final_layernorm." + wb] = sd["lm_head.ln." + wb]
            out["lm_head." + wb] = sd["lm_head.linear." + wb]
        return out, cfg
    for k, v in sd.items():
        if ".query_key_value." in k:   # 4.36: rows [head][q, k, v][d]
            pre, wb = k.split(".query_key_value.")
            hd = v.shape[0] // (3 * heads)
            per_head = v.reshape(heads, 3, hd, *v.shape[1:])
            for j, p in enumerate("qkv"):
                out[f"{pre}.{p}_proj.{wb}"] = per_head[:, j].reshape(heads * hd, *v.shape[1:])
        else:
            out[k] = v
    return out, cfg


class _RMSNorm(torch.nn.Module):
    """LlamaRMSNorm of the TinyGPT-V modeling_phi.py: weight only, eps 1e-6."""

    def __init__(self, weight, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone())
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps))


def interpolate_pos(pos, grid):
    """[1, 1+g*g, W] -> [1, 1+grid*grid, W] as eva_vit.interpolate_pos_embed does."""
    pos = pos.float()
    g = int(math.isqrt(pos.shape[1] - 1))
    if g == grid:
        return pos
    extra, tokens = pos[:, :1], pos[:, 1:]
    tokens = tokens.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(grid, grid), mode="bicubic", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra, tokens), dim=1)


class TinyGPTVReference:
    def __init__(self, phi2_dir, eva, blip2, stage_file, *, vision_heads, qformer_heads, image_size=None,
                 vision_layers=None, lora_merged=False, lora_alpha=None, cross_attention_freq=2):
        stage_obj = _load(stage_file)
        stage_sd = {k: v for k, v in stage_obj["model"].items()}
        cfg = stage_obj.get("config") or {}
        eva_sd = _load(eva)
        blip2_sd = _load(blip2)["model"]
        # the model's own namespace, loaded in the reference order: eva, then BLIP-2, then the stage file
        model_sd = {"visual_encoder." + k: v for k, v in eva_sd.items()}
        model_sd.update(blip2_sd)
        model_sd.update(stage_sd)
        model_sd = {k: (v.float() if v.is_floating_point() else v) for k, v in model_sd.items()}
        self.stage_cfg = cfg
        is_v2 = (cfg.get("model") or {}).get("arch") == "minigpt_v2"

        # ---- vision
        pw = model_sd["visual_encoder.patch_embed.proj.weight"]
        W, p = pw.shape[0], pw.shape[2]
        g = int(math.isqrt(model_sd["visual_encoder.pos_embed"].shape[1] - 1))
        n_blocks = len({k.split(".")[2] for k in model_sd if k.startswith("visual_encoder.blocks.")})
        depth = vision_layers if vision_layers is not None else n_blocks - 1
        S = image_size or (cfg.get("model") or {}).get("image_size") or g * p * (2 if is_v2 else 1)
        self.image_size = S
        from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel
        ff = model_sd["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0]
        vc = Blip2VisionConfig(hidden_size=W, intermediate_size=ff, num_hidden_layers=depth,
                               num_attention_heads=vision_heads, image_size=S, patch_size=p, hidden_act="gelu",
                               layer_norm_eps=1e-6, qkv_bias=True, attention_dropout=0.0)
        vm = Blip2VisionModel(vc).eval()
        vs = {"embeddings.class_embedding": model_sd["visual_encoder.cls_token"],
              "embeddings.position_embedding": interpolate_pos(model_sd["visual_encoder.pos_embed"], S // p),
              "embeddings.patch_embedding.weight": pw,
              "embeddings.patch_embedding.bias": model_sd["visual_encoder.patch_embed.proj.bias"]}
        for i in range(depth):
            s, d = f"visual_encoder.blocks.{i}.", f"encoder.layers.{i}."
            vs[d + "self_attn.qkv.weight"] = model_sd[s + "attn.qkv.weight"]
            vs[d + "self_attn.qkv.bias"] = torch.cat([model_sd[s + "attn.q_bias"], torch.zeros(W),
                                                      model_sd[s + "attn.v_bias"]])
            for a, b in (("self_attn.projection", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                for wb in ("weight", "bias"):
                    vs[f"{d}{a}.{wb}"] = model_sd[f"{s}{b}.{wb}"]
        vs["post_layernorm.weight"] = model_sd["ln_vision.weight"]
        vs["post_layernorm.bias"] = model_sd["ln_vision.bias"]
        vm.load_state_dict(vs, strict=True)
        ln_vision = torch.nn.LayerNorm(W, eps=1e-5)   # TinyGPT-V's ln_vision eps, not HF's 1e-6
        ln_vision.load_state_dict({"weight": model_sd["ln_vision.weight"], "bias": model_sd["ln_vision.bias"]})
        vm.post_layernorm = ln_vision
        self.vision = vm

        # ---- Q-Former
        qt = model_sd["query_tokens"]
        Wq = qt.shape[-1]
        nl = len({k.split(".")[4] for k in model_sd if k.startswith("Qformer.bert.encoder.layer.")})
        qff = model_sd["Qformer.bert.encoder.layer.0.intermediate_query.dense.weight"].shape[0]
        qc = Blip2QFormerConfig(hidden_size=Wq, num_hidden_layers=nl, num_attention_heads=qformer_heads,
                                intermediate_size=qff, cross_attention_frequency=cross_attention_freq,
                                encoder_hidden_size=W, layer_norm_eps=1e-12, hidden_act="gelu",
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        qm = Blip2QFormerModel(qc).eval()
        qs = {"layernorm.weight": model_sd["Qformer.bert.embeddings.LayerNorm.weight"],
              "layernorm.bias": model_sd["Qformer.bert.embeddings.LayerNorm.bias"]}
        for k in qm.state_dict():
            if k.startswith("encoder.layer."):
                src = "Qformer.bert." + k.replace(".attention.attention.", ".attention.self.").replace(
                    ".crossattention.attention.", ".crossattention.self.")
                qs[k] = model_sd[src]
        qm.load_state_dict(qs, strict=True)
        self.qformer = qm
        self.query_tokens = qt

        # ---- projector
        self.proj1 = torch.nn.Linear(Wq, model_sd["llama_proj.weight"].shape[0])
        self.proj1.load_state_dict({"weight": model_sd["llama_proj.weight"], "bias": model_sd["llama_proj.bias"]})
        self.proj2 = torch.nn.Linear(self.proj1.out_features, model_sd["llama_proj2.weight"].shape[0])
        self.proj2.load_state_dict({"weight": model_sd["llama_proj2.weight"], "bias": model_sd["llama_proj2.bias"]})

        # ---- language model
        self._build_phi(phi2_dir, stage_sd, cfg, lora_merged, lora_alpha)

    def _build_phi(self, phi2_dir, stage_sd, cfg, lora_merged, lora_alpha):
        from transformers import PhiConfig, PhiForCausalLM
        base, bcfg = _phi_base_weights(phi2_dir)
        E = base["model.embed_tokens.weight"].shape[1]
        V = base["model.embed_tokens.weight"].shape[0]
        H = bcfg.get("num_attention_heads") or bcfg.get("n_head")
        L = len({k.split(".")[2] for k in base if k.startswith("model.layers.")})
        prf = bcfg.get("partial_rotary_factor")
        if prf is None:
            prf = bcfg["rotary_dim"] / (E // H)
        pc = PhiConfig(vocab_size=V, hidden_size=E, num_attention_heads=H, num_key_value_heads=H, num_hidden_layers=L,
                       intermediate_size=base["model.layers.0.mlp.fc1.weight"].shape[0], partial_rotary_factor=prf,
                       qk_layernorm=True, layer_norm_eps=bcfg.get("layer_norm_eps", bcfg.get("layer_norm_epsilon", 1e-5)),
                       rope_theta=bcfg.get("rope_theta", 10000.0),
                       max_position_embeddings=bcfg.get("max_position_embeddings", bcfg.get("n_positions", 2048)),
                       resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)
        pc._attn_implementation = "eager"
        phi = PhiForCausalLM(pc).eval()
        D = E // H
        lora_pfx = "llama_model.base_model.model."
        pfx = lora_pfx if any(k.startswith(lora_pfx) for k in stage_sd) else "llama_model."
        sd = dict(base)
        for i in range(L):
            sd[f"model.layers.{i}.self_attn.q_layernorm.bias"] = torch.zeros(D)
            sd[f"model.layers.{i}.self_attn.k_layernorm.bias"] = torch.zeros(D)
        for k, v in stage_sd.items():   # trained norm weights
            if k.startswith(pfx) and "lora_" not in k:
                sd[k[len(pfx):]] = v.float()
        alpha = lora_alpha if lora_alpha is not None else (cfg.get("model") or {}).get("lora_alpha", 16)
        self.lora = {}
        for i in range(L):
            for m in ("query_key_value", "dense"):
                for style in ("lora_{}.weight", "lora_{}.default.weight"):
                    a = f"{pfx}model.layers.{i}.self_attn.{m}.{style.format('A')}"
                    if a in stage_sd:
                        A = stage_sd[a].float()
                        B = stage_sd[a.replace("lora_A", "lora_B")].float()
                        self.lora[(i, m)] = (A, B, alpha / A.shape[0])
        rms = {i: sd.pop(f"model.layers.{i}.post_layernorm.weight") for i in range(L)}
        if lora_merged:
            for (i, m), (A, B, s) in self.lora.items():
                delta = s * (B @ A)
                if m == "dense":
                    sd[f"model.layers.{i}.self_attn.dense.weight"] = sd[f"model.layers.{i}.self_attn.dense.weight"] + delta
                else:
                    parts = delta.reshape(H, 3, D, E)
                    for j, p in enumerate("qkv"):
                        key = f"model.layers.{i}.self_attn.{p}_proj.weight"
                        sd[key] = sd[key] + parts[:, j].reshape(H * D, E)
        phi.load_state_dict(sd, strict=True)
        for i, layer in enumerate(phi.model.layers):
            layer.post_rms = _RMSNorm(rms[i])
            layer.self_attn.register_forward_hook(
                lambda mod, inp, out, norm=layer.post_rms: (norm(out[0]),) + tuple(out[1:]))
            if not lora_merged:
                self._lora_hooks(i, layer, H, D, E)
        self.phi = phi

    def _lora_hooks(self, i, layer, H, D, E):
        """Unmerged LoRA, y = W x + b + s * B(A x); query_key_value's B rows are interleaved per head."""
        if (i, "query_key_value") in self.lora:
            A, B, s = self.lora[(i, "query_key_value")]
            Bh = B.reshape(H, 3, D, -1)
            for j, p in enumerate("qkv"):
                Bp = Bh[:, j].reshape(H * D, -1)
                getattr(layer.self_attn, f"{p}_proj").register_forward_hook(
                    lambda mod, inp, out, A=A, Bp=Bp, s=s: out + s * ((inp[0] @ A.T) @ Bp.T))
        if (i, "dense") in self.lora:
            A, B, s = self.lora[(i, "dense")]
            layer.self_attn.dense.register_forward_hook(
                lambda mod, inp, out, A=A, B=B, s=s: out + s * ((inp[0] @ A.T) @ B.T))

    @torch.no_grad()
    def image_embeddings(self, pixels):
        """pixels [3,S,S] (or [1,3,S,S]) -> projected image embeddings [n_query, n_embd]."""
        x = pixels.float()
        if x.dim() == 3:
            x = x[None]
        img = self.vision(pixel_values=x).last_hidden_state          # ln_vision(ViT(x)), [1, 1+N, W]
        q = self.qformer(query_embeds=self.query_tokens.expand(x.shape[0], -1, -1),
                         encoder_hidden_states=img).last_hidden_state   # [1, Q, Wq]
        return self.proj2(self.proj1(q))[0]

    @torch.no_grad()
    def vision_tokens(self, pixels):
        x = pixels.float()
        return self.vision(pixel_values=x[None] if x.dim() == 3 else x).last_hidden_state[0]

    @torch.no_grad()
    def logits(self, token_ids, pixels=None, image_at=None):
        """Logits of every position of the spliced sequence: ids[:image_at] + image + ids[image_at:]."""
        ids = torch.tensor(list(token_ids), dtype=torch.long)
        emb = self.phi.model.embed_tokens(ids)
        if pixels is not None:
            at = len(ids) if image_at is None else image_at
            emb = torch.cat([emb[:at], self.image_embeddings(pixels), emb[at:]], dim=0)
        pos = torch.arange(emb.shape[0])[None]
        return self.phi(inputs_embeds=emb[None], position_ids=pos, use_cache=False).logits[0].float()


def reference_image_embeddings(phi2_dir, eva, blip2, stage_file, pixels, **kw):
    return TinyGPTVReference(phi2_dir, eva, blip2, stage_file, **kw).image_embeddings(pixels)


def reference_logits(phi2_dir, eva, blip2, stage_file, pixels, token_ids, image_at, **kw):
    return TinyGPTVReference(phi2_dir, eva, blip2, stage_file, **kw).logits(token_ids, pixels, image_at)


def reference_kwargs(s, **extra):
    """TinyGPTVReference arguments for a fixtures.checkpoints.make_tinygptv_set() result."""
    return dict(phi2_dir=s["phi2"], eva=s["eva"], blip2=s["blip2"], stage_file=s["stage_file"],
                vision_heads=s["vision_heads"], qformer_heads=s["qformer_heads"], **extra)
