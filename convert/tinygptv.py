"""TinyGPT-V checkpoints -> one GGUF (general.architecture = tinygptv).

Inputs (architecture spec sections 1-9, 13):
- the base Phi-2 folder (any layout, see phi2.py),
- eva_vit_g.pth: a raw EVA ViT-g state dict (40 blocks; the model uses the first 39),
- blip2_pretrained_flant5xxl.pth: {"model": ...} with ln_vision, the Q-Former and query_tokens,
- TinyGPT-V_for_StageN.pth: {"model": ..., "config": ..., ...} with the projector, the trained norm
  weights, LoRA (stages 2-4) and possibly its own Q-Former (the Dec-2023 stage 4).
Precedence, as in the reference loader: base Phi-2 < eva < BLIP-2 < stage file.
"""

import math
import re

from . import ConvertError
from . import schema
from .checkpoint import torch_load
from .phi2 import Phi2
from .writer import Metadata, Planned, check_output_path, write_with_outtype

LORA_PREFIX = "llama_model.base_model.model."
PLAIN_PREFIX = "llama_model."

# keys of the EVA file that the model never reads (besides blocks past the used depth)
_EVA_IGNORED = re.compile(r"^(norm|fc_norm|head|lm_head)\.")
# keys of the BLIP-2 file outside TinyGPT-V's query path (text side of the Q-Former, the T5/OPT side)
_BLIP2_USED = re.compile(r"^(visual_encoder\.|ln_vision\.|query_tokens$|Qformer\.bert\.(embeddings\.LayerNorm\.|"
                         r"encoder\.layer\.\d+\.(attention|crossattention|intermediate_query|output_query)\.))")
_QF_LAYER = re.compile(r"^Qformer\.bert\.encoder\.layer\.(\d+)\.")
_EVA_BLOCK = re.compile(r"^blocks\.(\d+)\.")

_QF_PARTS = {  # GGUF part -> Q-Former module under layer l
    "attn_q": "attention.self.query", "attn_k": "attention.self.key", "attn_v": "attention.self.value",
    "attn_out": "attention.output.dense", "attn_ln": "attention.output.LayerNorm",
    "cross_q": "crossattention.self.query", "cross_k": "crossattention.self.key",
    "cross_v": "crossattention.self.value", "cross_out": "crossattention.output.dense",
    "cross_ln": "crossattention.output.LayerNorm",
    "ffn_up": "intermediate_query.dense", "ffn_down": "output_query.dense", "ffn_ln": "output_query.LayerNorm",
}


def interpolate_pos_embed(pos, grid):
    """pos [1+g*g, W] -> [1+grid*grid, W]: bicubic (align_corners=False) in float32, CLS row kept."""
    import torch
    import torch.nn.functional as F
    pos = pos.to(torch.float32)
    n, w = pos.shape
    g = math.isqrt(n - 1)
    if g == grid:
        return pos
    tokens = pos[1:].reshape(1, g, g, w).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(grid, grid), mode="bicubic", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).reshape(grid * grid, w)
    return torch.cat([pos[:1], tokens], dim=0)


def _state_dict(obj, path, what, want_model_key):
    import torch
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        sd = obj["model"]
    elif want_model_key:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ConvertError(f"{path} is not a {what}: expected a dict with a 'model' state dict, found {keys}")
    else:
        sd = obj
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConvertError(f"{path} is not a {what}: no state dict of tensors")
    return sd


class _Problems:
    def __init__(self):
        self.sections = []

    def add(self, what, missing=(), wrong=(), extra=()):
        if missing or wrong or extra:
            self.sections.append((what, sorted(missing), sorted(wrong), sorted(extra)))

    def raise_if_any(self):
        if not self.sections:
            return
        lines = ["the checkpoints do not match the expected TinyGPT-V tensors:"]
        for what, missing, wrong, extra in self.sections:
            lines.append(f"  {what}:")
            for title, items in (("missing", missing), ("wrong shape", wrong), ("unexpected", extra)):
                if items:
                    lines.append(f"    {title} ({len(items)}): " + ", ".join(items))
        raise ConvertError("\n".join(lines))


def detect_stage(stage_sd, config):
    """Stage from the saved config and keys: arch minigpt_v2 -> 4; no LoRA under llama_model.model. -> 1;
    LoRA with the cc_sbu_align dataset (stage-3 training data) -> 3, other LoRA files -> 2."""
    model_cfg = (config or {}).get("model") or {}
    if model_cfg.get("arch") == "minigpt_v2":
        return 4
    has_lora = any(k.startswith(LORA_PREFIX) for k in stage_sd)
    if not has_lora and any(k.startswith(PLAIN_PREFIX + "model.") for k in stage_sd):
        return 1
    datasets = (config or {}).get("datasets") or {}
    if has_lora and datasets and "cc_sbu_align" not in datasets:
        return 2
    return 3


class TinyGPTV:
    """Everything read and checked; `planned()` and `metadata()` give the GGUF content."""

    def __init__(self, phi2_dir, eva, blip2, stage_file, *, stage=None, image_size=None, vision_layers=None,
                 vision_head_size=schema.VIT_HEAD_SIZE, vision_heads=None, qformer_head_size=schema.QFORMER_HEAD_SIZE,
                 qformer_heads=None, cross_attention_freq=None, lora_alpha=None):
        stage_obj = torch_load(stage_file, "TinyGPT-V stage file")
        self.stage_sd = _state_dict(stage_obj, stage_file, "TinyGPT-V stage file", True)
        self.config = stage_obj.get("config") if isinstance(stage_obj.get("config"), dict) else {}
        if not any(k.startswith(("llama_proj", "llama_model.")) for k in self.stage_sd):
            raise ConvertError(f"{stage_file} is not a TinyGPT-V stage file: it has no llama_proj or llama_model "
                               f"weights (first keys: {sorted(self.stage_sd)[:6]})")
        self.eva_sd = _state_dict(torch_load(eva, "EVA ViT checkpoint"), eva, "EVA ViT state dict", False)
        if "patch_embed.proj.weight" not in self.eva_sd:
            raise ConvertError(f"{eva} is not an EVA ViT checkpoint: no patch_embed.proj.weight "
                               f"(first keys: {sorted(self.eva_sd)[:6]})")
        self.blip2_sd = _state_dict(torch_load(blip2, "BLIP-2 checkpoint"), blip2, "BLIP-2 checkpoint", True)
        self.paths = {"eva": eva, "blip2": blip2, "stage": stage_file}
        self.phi = Phi2(phi2_dir)
        self.stage = stage or detect_stage(self.stage_sd, self.config)
        self.lora_alpha = float(lora_alpha if lora_alpha is not None
                                else (self.config.get("model") or {}).get("lora_alpha", 16))
        self._merge_sources()
        self._sizes(image_size, vision_layers, vision_head_size, vision_heads, qformer_head_size, qformer_heads,
                    cross_attention_freq)
        self._check()

    # ------------------------------------------------------------------------------- sources
    def _merge_sources(self):
        """name in the TinyGPT-V model -> (tensor, origin). Vision, ln_vision, Q-Former, projector."""
        src = {}
        for k, v in self.eva_sd.items():
            src["visual_encoder." + k] = (v, "eva")
        for k, v in self.blip2_sd.items():
            if _BLIP2_USED.match(k):
                src[k] = (v, "blip2")
        self.lm_prefix = LORA_PREFIX if any(k.startswith(LORA_PREFIX) for k in self.stage_sd) else PLAIN_PREFIX
        for k, v in self.stage_sd.items():
            if not k.startswith("llama_model.") and k != "Qformer.bert.embeddings.position_ids":
                src[k] = (v, "stage")
        self.src = src

    def t(self, name):
        import torch
        return self.src[name][0].to(torch.float32)

    def lm(self, suffix):
        """A tensor of the stage file's language model, e.g. lm('model.final_layernorm.weight')."""
        import torch
        return self.stage_sd[self.lm_prefix + suffix].to(torch.float32)

    # --------------------------------------------------------------------------------- sizes
    def _sizes(self, image_size, vision_layers, vision_head_size, vision_heads, qformer_head_size, qformer_heads,
               cross_attention_freq):
        pw = self.src["visual_encoder.patch_embed.proj.weight"][0]
        if pw.dim() != 4 or pw.shape[1] != 3 or pw.shape[2] != pw.shape[3]:
            raise ConvertError(f"EVA patch_embed.proj.weight has shape {tuple(pw.shape)}, expected [W, 3, p, p]")
        self.v_width, self.patch = int(pw.shape[0]), int(pw.shape[2])
        pos = self.src.get("visual_encoder.pos_embed")
        if pos is None:
            raise ConvertError(f"{self.paths['eva']}: missing pos_embed")
        n_pos = pos[0].shape[-2]
        g = math.isqrt(n_pos - 1)
        if pos[0].dim() != 3 or g * g != n_pos - 1:
            raise ConvertError(f"EVA pos_embed has shape {tuple(pos[0].shape)}, expected [1, 1+g*g, W]")
        self.eva_grid = g
        blocks = sorted({int(m.group(1)) for k in self.eva_sd for m in [_EVA_BLOCK.match(k)] if m})
        if not blocks or blocks != list(range(len(blocks))):
            raise ConvertError(f"{self.paths['eva']}: EVA blocks are not numbered 0..n-1: {blocks[:5]}...")
        self.eva_blocks_in_file = len(blocks)
        self.v_layers = vision_layers if vision_layers is not None else max(1, len(blocks) - 1)
        if not 1 <= self.v_layers <= len(blocks):
            raise ConvertError(f"--vision-layers {self.v_layers} is outside 1..{len(blocks)} (blocks in the EVA file)")
        fc1 = self.eva_sd.get("blocks.0.mlp.fc1.weight")
        self.v_ff = int(fc1.shape[0]) if fc1 is not None and fc1.dim() == 2 else 4 * self.v_width
        self.v_heads = vision_heads or self._heads(self.v_width, vision_head_size, "vision")
        if self.v_width % self.v_heads:
            raise ConvertError(f"vision head count {self.v_heads} does not divide the ViT width {self.v_width}")

        cfg_size = (self.config.get("model") or {}).get("image_size")
        if image_size is None:
            image_size = int(cfg_size) if cfg_size else self.eva_grid * self.patch * (2 if self.stage == 4 else 1)
        if image_size <= 0 or image_size % self.patch:
            raise ConvertError(f"image size {image_size} is not a positive multiple of the patch size {self.patch}")
        self.image_size = int(image_size)
        self.grid = self.image_size // self.patch

        q = self.src.get("query_tokens")
        if q is None or q[0].dim() != 3 or q[0].shape[0] != 1:
            shape = None if q is None else tuple(q[0].shape)
            raise ConvertError(f"query_tokens missing from the BLIP-2 and stage files or mis-shaped ({shape}), "
                               "expected [1, n_query, width]")
        self.n_query, self.q_width = int(q[0].shape[1]), int(q[0].shape[2])
        layers = sorted({int(m.group(1)) for k in self.src for m in [_QF_LAYER.match(k)] if m})
        if not layers or layers != list(range(len(layers))):
            raise ConvertError(f"Q-Former layers missing or not numbered 0..n-1 in {self.paths['blip2']}: {layers[:5]}")
        self.q_layers = len(layers)
        cross = [l for l in layers if f"Qformer.bert.encoder.layer.{l}.crossattention.self.query.weight" in self.src]
        if cross_attention_freq is None:
            cross_attention_freq = next((f for f in range(1, self.q_layers + 1)
                                         if cross == [l for l in layers if l % f == 0]), None)
            if cross_attention_freq is None:
                raise ConvertError(f"Q-Former cross-attention layers {cross} do not follow 'every n-th layer'")
        self.cross_freq = int(cross_attention_freq)
        iq = self.src.get("Qformer.bert.encoder.layer.0.intermediate_query.dense.weight")
        self.q_ff = int(iq[0].shape[0]) if iq is not None else 4 * self.q_width
        self.q_heads = qformer_heads or self._heads(self.q_width, qformer_head_size, "Q-Former")
        if self.q_width % self.q_heads:
            raise ConvertError(f"Q-Former head count {self.q_heads} does not divide its width {self.q_width}")
        lp = self.src.get("llama_proj.weight")
        self.proj_width = int(lp[0].shape[0]) if lp is not None and lp[0].dim() == 2 else None
        qkv_a = [k for k in self.stage_sd if k.startswith(self.lm_prefix) and ".query_key_value.lora_A" in k]
        self.lora_rank = int(self.stage_sd[qkv_a[0]].shape[0]) if qkv_a else None

    @staticmethod
    def _heads(width, head_size, what):
        if head_size <= 0 or width % head_size:
            raise ConvertError(f"{what} width {width} is not a multiple of the head size {head_size}; "
                               f"give the head count explicitly")
        return width // head_size

    # ------------------------------------------------------------------------------ checking
    def expected_vision(self):
        W, F, p = self.v_width, self.v_ff, self.patch
        e = {"visual_encoder.cls_token": (1, 1, W), "visual_encoder.pos_embed": (1, 1 + self.eva_grid ** 2, W),
             "visual_encoder.patch_embed.proj.weight": (W, 3, p, p), "visual_encoder.patch_embed.proj.bias": (W,),
             "ln_vision.weight": (W,), "ln_vision.bias": (W,)}
        for i in range(self.v_layers):
            b = f"visual_encoder.blocks.{i}."
            e.update({b + "norm1.weight": (W,), b + "norm1.bias": (W,), b + "attn.qkv.weight": (3 * W, W),
                      b + "attn.q_bias": (W,), b + "attn.v_bias": (W,), b + "attn.proj.weight": (W, W),
                      b + "attn.proj.bias": (W,), b + "norm2.weight": (W,), b + "norm2.bias": (W,),
                      b + "mlp.fc1.weight": (F, W), b + "mlp.fc1.bias": (F,), b + "mlp.fc2.weight": (W, F),
                      b + "mlp.fc2.bias": (W,)})
        return e

    def expected_qformer(self):
        Q, W, F, V = self.n_query, self.q_width, self.q_ff, self.v_width
        e = {"query_tokens": (1, Q, W), "Qformer.bert.embeddings.LayerNorm.weight": (W,),
             "Qformer.bert.embeddings.LayerNorm.bias": (W,)}
        for l in range(self.q_layers):
            for part, mod in _QF_PARTS.items():
                if part.startswith("cross") and l % self.cross_freq:
                    continue
                k = f"Qformer.bert.encoder.layer.{l}.{mod}"
                if part.endswith("_ln"):
                    e.update({k + ".weight": (W,), k + ".bias": (W,)})
                elif part in ("cross_k", "cross_v"):
                    e.update({k + ".weight": (W, V), k + ".bias": (W,)})
                elif part == "ffn_up":
                    e.update({k + ".weight": (F, W), k + ".bias": (F,)})
                elif part == "ffn_down":
                    e.update({k + ".weight": (W, F), k + ".bias": (W,)})
                else:
                    e.update({k + ".weight": (W, W), k + ".bias": (W,)})
        return e

    def expected_projector(self):
        P, E, W = self.proj_width or 0, self.phi.n_embd, self.q_width
        return {"llama_proj.weight": (P, W), "llama_proj.bias": (P,), "llama_proj2.weight": (E, P),
                "llama_proj2.bias": (E,)}

    def expected_lm(self):
        """Stage-file language-model keys (without the prefix): required and optional."""
        E, D = self.phi.n_embd, self.phi.head_dim
        req, opt = {}, {}
        for i in range(self.phi.n_layer):
            b = f"model.layers.{i}."
            req.update({b + "self_attn.q_layernorm.weight": (D,), b + "self_attn.k_layernorm.weight": (D,),
                        b + "input_layernorm.weight": (E,), b + "post_layernorm.weight": (E,)})
            opt.update({b + "self_attn.q_layernorm.bias": (D,), b + "self_attn.k_layernorm.bias": (D,),
                        b + "input_layernorm.bias": (E,)})
        req["model.final_layernorm.weight"] = (E,)
        opt["model.final_layernorm.bias"] = (E,)
        return req, opt

    def lora_keys(self, i, module):
        """(A key, B key) of a LoRA pair in the stage file (either peft naming), or None."""
        for style in ("lora_{}.weight", "lora_{}.default.weight"):
            a = f"{self.lm_prefix}model.layers.{i}.self_attn.{module}.{style.format('A')}"
            b = f"{self.lm_prefix}model.layers.{i}.self_attn.{module}.{style.format('B')}"
            if a in self.stage_sd or b in self.stage_sd:
                return a, b
        return None

    def _check(self):
        probs = _Problems()
        have = {k: tuple(v[0].shape) for k, v in self.src.items()}
        origin = {k: v[1] for k, v in self.src.items()}
        exp = {**self.expected_vision(), **self.expected_qformer(), **self.expected_projector()}
        missing = [k for k in exp if k not in have]
        wrong = [f"{k} {have[k]} (expected {exp[k]}, from the {origin[k]} file)" for k in exp
                 if k in have and have[k] != tuple(exp[k])]
        extra_eva = [k for k in self.eva_sd if ("visual_encoder." + k) not in exp and not _EVA_IGNORED.match(k)
                     and not (_EVA_BLOCK.match(k) and int(_EVA_BLOCK.match(k).group(1)) >= self.v_layers)]
        probs.add(f"vision/Q-Former/projector ({self.paths['eva']}, {self.paths['blip2']}, {self.paths['stage']})",
                  missing, wrong)
        probs.add(f"EVA file {self.paths['eva']}", extra=extra_eva)

        req, opt = self.expected_lm()
        E = self.phi.n_embd
        lora = {}
        lm_keys = {k[len(self.lm_prefix):]: tuple(v.shape) for k, v in self.stage_sd.items() if k.startswith(self.lm_prefix)}
        known = set(req) | set(opt)
        for i in range(self.phi.n_layer):
            for module, out_rows in (("query_key_value", 3 * E), ("dense", E)):
                pair = self.lora_keys(i, module)
                if pair is None:
                    continue
                a, b = (k[len(self.lm_prefix):] for k in pair)
                known.update((a, b))
                r = lm_keys.get(a, (None,))[0]
                req[a] = (r, E)
                req[b] = (out_rows, r)
                lora[(i, module)] = pair
        self.lora = lora
        lm_missing = [self.lm_prefix + k for k in req if k not in lm_keys]
        lm_wrong = [f"{self.lm_prefix}{k} {lm_keys[k]} (expected {tuple(s)})" for k, s in {**req, **opt}.items()
                    if k in lm_keys and lm_keys[k] != tuple(s)]
        lm_extra = [self.lm_prefix + k for k in lm_keys if k not in known]
        stage_extra = [k for k in self.stage_sd if not k.startswith(self.lm_prefix) and k not in exp
                       and k != "Qformer.bert.embeddings.position_ids"
                       and not (k.startswith("visual_encoder.blocks.") and
                                int(k.split(".")[2]) >= self.v_layers)]
        if self.lm_prefix == LORA_PREFIX:
            stage_extra += [k for k in self.stage_sd if k.startswith(PLAIN_PREFIX) and not k.startswith(LORA_PREFIX)]
        probs.add(f"stage file {self.paths['stage']}", lm_missing, lm_wrong, lm_extra + stage_extra)
        probs.raise_if_any()
        if lora and self.lora_rank is None:
            raise ConvertError("LoRA on dense but not on query_key_value: cannot tell the rank")

    # ------------------------------------------------------------------------------- tensors
    def _lora_delta(self, i, module):
        """alpha/r * B @ A of a LoRA pair (rows in the checkpoint's own order), or None."""
        pair = self.lora.get((i, module))
        if pair is None:
            return None
        import torch
        a = self.stage_sd[pair[0]].to(torch.float32)
        b = self.stage_sd[pair[1]].to(torch.float32)
        return (self.lora_alpha / a.shape[0]) * (b @ a)

    def _lm_opt(self, suffix, fallback):
        return self.lm(suffix) if (self.lm_prefix + suffix) in self.stage_sd else fallback()

    def planned_lm(self):
        import torch
        phi, E, D = self.phi, self.phi.n_embd, self.phi.head_dim
        out = []
        for p in phi.planned(qk_norm=False):
            name = p.name
            m = re.match(r"blk\.(\d+)\.(\w+)\.(weight|bias)$", name)
            if name == schema.OUTPUT_NORM + ".weight":
                out.append(Planned(name, p.shape, lambda: self.lm("model.final_layernorm.weight")))
                continue
            if name == schema.OUTPUT_NORM + ".bias":
                out.append(Planned(name, p.shape, lambda f=p.produce: self._lm_opt("model.final_layernorm.bias", f)))
                continue
            if not m:
                out.append(p)
                continue
            i, part, wb = int(m.group(1)), m.group(2), m.group(3)
            pre = f"model.layers.{i}."
            if part == schema.ATTN_NORM and wb == "weight":
                out.append(Planned(name, p.shape, lambda i=i: self.lm(f"model.layers.{i}.input_layernorm.weight")))
            elif part == schema.ATTN_NORM:
                out.append(Planned(name, p.shape, lambda f=p.produce, pre=pre: self._lm_opt(pre + "input_layernorm.bias", f)))
                for which, gname in (("q", schema.ATTN_Q_NORM), ("k", schema.ATTN_K_NORM)):
                    key = f"{pre}self_attn.{which}_layernorm."
                    out.append(Planned(schema.blk(i, gname) + ".weight", (D,), lambda key=key: self.lm(key + "weight")))
                    out.append(Planned(schema.blk(i, gname) + ".bias", (D,),
                                       lambda key=key: self._lm_opt(key + "bias", lambda: torch.zeros(D))))
            elif part == schema.ATTN_QKV and wb == "weight":
                out.append(Planned(name, p.shape, lambda i=i: phi.qkv(i, "weight", self._lora_delta(i, "query_key_value"))))
            elif part == schema.ATTN_OUTPUT and wb == "weight":
                def dense(i=i):
                    w = phi.layer_tensor(i, "dense", "weight")
                    d = self._lora_delta(i, "dense")
                    return w if d is None else w + d
                out.append(Planned(name, p.shape, dense))
            elif part == schema.ATTN_OUTPUT and wb == "bias":
                out.append(p)
                out.append(Planned(schema.blk(i, schema.ATTN_POST_NORM) + ".weight", (E,),
                                   lambda pre=pre: self.lm(pre + "post_layernorm.weight")))
            else:
                out.append(p)
        return out

    def planned_vision(self):
        import torch
        W, p = self.v_width, self.patch
        P = [Planned(schema.V_PATCH_EMBD + ".weight", (W, 3 * p * p),
                     lambda: self.t("visual_encoder.patch_embed.proj.weight").reshape(W, 3 * p * p)),
             Planned(schema.V_PATCH_EMBD + ".bias", (W,), lambda: self.t("visual_encoder.patch_embed.proj.bias")),
             Planned(schema.V_CLS, (W,), lambda: self.t("visual_encoder.cls_token").reshape(W)),
             Planned(schema.V_POS_EMBD, (1 + self.grid ** 2, W),
                     lambda: interpolate_pos_embed(self.t("visual_encoder.pos_embed")[0], self.grid))]
        for i in range(self.v_layers):
            b = f"visual_encoder.blocks.{i}."
            g = lambda part, i=i: schema.vblk(i, part)  # noqa: E731
            P += [Planned(g(schema.V_LN1) + ".weight", (W,), lambda b=b: self.t(b + "norm1.weight")),
                  Planned(g(schema.V_LN1) + ".bias", (W,), lambda b=b: self.t(b + "norm1.bias")),
                  Planned(g(schema.V_ATTN_QKV) + ".weight", (3 * W, W), lambda b=b: self.t(b + "attn.qkv.weight")),
                  Planned(g(schema.V_ATTN_QKV) + ".bias", (3 * W,),
                          lambda b=b: torch.cat([self.t(b + "attn.q_bias"), torch.zeros(W), self.t(b + "attn.v_bias")])),
                  Planned(g(schema.V_ATTN_OUT) + ".weight", (W, W), lambda b=b: self.t(b + "attn.proj.weight")),
                  Planned(g(schema.V_ATTN_OUT) + ".bias", (W,), lambda b=b: self.t(b + "attn.proj.bias")),
                  Planned(g(schema.V_LN2) + ".weight", (W,), lambda b=b: self.t(b + "norm2.weight")),
                  Planned(g(schema.V_LN2) + ".bias", (W,), lambda b=b: self.t(b + "norm2.bias")),
                  Planned(g(schema.V_FFN_UP) + ".weight", (self.v_ff, W), lambda b=b: self.t(b + "mlp.fc1.weight")),
                  Planned(g(schema.V_FFN_UP) + ".bias", (self.v_ff,), lambda b=b: self.t(b + "mlp.fc1.bias")),
                  Planned(g(schema.V_FFN_DOWN) + ".weight", (W, self.v_ff), lambda b=b: self.t(b + "mlp.fc2.weight")),
                  Planned(g(schema.V_FFN_DOWN) + ".bias", (W,), lambda b=b: self.t(b + "mlp.fc2.bias"))]
        P += [Planned(schema.V_POST_LN + ".weight", (W,), lambda: self.t("ln_vision.weight")),
              Planned(schema.V_POST_LN + ".bias", (W,), lambda: self.t("ln_vision.bias"))]
        return P

    def planned_qformer(self):
        e = self.expected_qformer()
        P = [Planned(schema.QF_QUERY, (self.n_query, self.q_width), lambda: self.t("query_tokens")[0]),
             Planned(schema.QF_EMB_LN + ".weight", (self.q_width,), lambda: self.t("Qformer.bert.embeddings.LayerNorm.weight")),
             Planned(schema.QF_EMB_LN + ".bias", (self.q_width,), lambda: self.t("Qformer.bert.embeddings.LayerNorm.bias"))]
        for l in range(self.q_layers):
            parts = schema.QF_SELF + (schema.QF_CROSS if l % self.cross_freq == 0 else ()) + schema.QF_FFN
            for part in parts:
                for wb in ("weight", "bias"):
                    key = f"Qformer.bert.encoder.layer.{l}.{_QF_PARTS[part]}.{wb}"
                    P.append(Planned(f"{schema.qfblk(l, part)}.{wb}", e[key], lambda key=key: self.t(key)))
        return P

    def planned_projector(self):
        e = self.expected_projector()
        return [Planned(f"{g}.{wb}", e[f"{k}.{wb}"], lambda k=k, wb=wb: self.t(f"{k}.{wb}"))
                for g, k in ((schema.MM_0, "llama_proj"), (schema.MM_1, "llama_proj2")) for wb in ("weight", "bias")]

    def planned(self):
        return self.planned_lm() + self.planned_vision() + self.planned_qformer() + self.planned_projector()

    # ------------------------------------------------------------------------------ metadata
    def metadata(self, vocab, chat=None, name=None):
        meta = Metadata()
        meta.str(schema.GENERAL_NAME, name or f"TinyGPT-V stage {self.stage}")
        self.phi.add_lm_metadata(meta, schema.ARCH_TINYGPTV)
        meta.f32(schema.lm_key(schema.ARCH_TINYGPTV, schema.LM_LAYER_NORM_RMS_EPS), schema.LM_RMS_EPS)
        meta.u32(schema.STAGE, self.stage)
        meta.u32(schema.VISION_IMAGE_SIZE, self.image_size)
        meta.u32(schema.VISION_PATCH_SIZE, self.patch)
        meta.u32(schema.VISION_EMBEDDING_LENGTH, self.v_width)
        meta.u32(schema.VISION_BLOCK_COUNT, self.v_layers)
        meta.u32(schema.VISION_HEAD_COUNT, self.v_heads)
        meta.u32(schema.VISION_FEED_FORWARD_LENGTH, self.v_ff)
        meta.f32(schema.VISION_LAYER_NORM_EPS, schema.VISION_LN_EPS)
        meta.f32(schema.VISION_POST_NORM_EPS, schema.VISION_POST_LN_EPS)
        meta.u32(schema.QFORMER_EMBEDDING_LENGTH, self.q_width)
        meta.u32(schema.QFORMER_BLOCK_COUNT, self.q_layers)
        meta.u32(schema.QFORMER_HEAD_COUNT, self.q_heads)
        meta.u32(schema.QFORMER_FEED_FORWARD_LENGTH, self.q_ff)
        meta.u32(schema.QFORMER_QUERY_COUNT, self.n_query)
        meta.u32(schema.QFORMER_CROSS_ATTENTION_FREQ, self.cross_freq)
        meta.f32(schema.QFORMER_LAYER_NORM_EPS, schema.QFORMER_LN_EPS)
        meta.arr_f32(schema.IMAGE_MEAN, schema.CLIP_MEAN)
        meta.arr_f32(schema.IMAGE_STD, schema.CLIP_STD)
        c = schema.chat_defaults(self.stage)
        c.update(chat or {})
        if schema.IMAGE_PLACEHOLDER not in c["template"] or schema.PROMPT_PLACEHOLDER not in c["template"]:
            raise ConvertError(f"chat template {c['template']!r} must contain {schema.IMAGE_PLACEHOLDER} and "
                               f"{schema.PROMPT_PLACEHOLDER}")
        if schema.PROMPT_PLACEHOLDER not in c["turn_template"]:
            raise ConvertError(f"turn template {c['turn_template']!r} must contain {schema.PROMPT_PLACEHOLDER}")
        add_chat_metadata(meta, vocab, c)
        vocab.add_to(meta)
        return meta


def add_chat_metadata(meta, vocab, c):
    """The prompt format and generation settings `c` (schema.chat_defaults layout) as metadata; the stop
    ids are the tokens whose text is a stop string, then eos."""
    meta.str(schema.CHAT_TEMPLATE, c["template"])
    meta.str(schema.CHAT_SYSTEM, c["system"])
    meta.str(schema.CHAT_TURN_TEMPLATE, c["turn_template"])
    meta.str(schema.CHAT_ANSWER_SUFFIX, c["answer_suffix"])
    meta.arr_str(schema.CHAT_STOP_STRINGS, c["stop_strings"])
    stop_ids = [i for i in (vocab.token_id(s) for s in c["stop_strings"]) if i is not None]
    if vocab.eos is not None and vocab.eos not in stop_ids:
        stop_ids.append(vocab.eos)
    meta.arr_i32(schema.CHAT_STOP_IDS, stop_ids)
    meta.f32(schema.CHAT_TEMPERATURE, c["temperature"])
    meta.f32(schema.CHAT_TOP_P, c["top_p"])
    meta.f32(schema.CHAT_REPETITION_PENALTY, c["repetition_penalty"])
    meta.u32(schema.CHAT_MAX_NEW_TOKENS, c["max_new_tokens"])


def convert_tinygptv(phi2_dir, eva, blip2, stage_file, out_path, outtype="f16", *, stage=None, image_size=None,
                     vision_layers=None, vision_head_size=schema.VIT_HEAD_SIZE, vision_heads=None,
                     qformer_head_size=schema.QFORMER_HEAD_SIZE, qformer_heads=None, cross_attention_freq=None,
                     lora_alpha=None, chat=None, name=None, progress=True):
    """Converts the TinyGPT-V checkpoint set to one GGUF; returns out_path.

    chat: optional overrides of the stage's prompt format and generation defaults, keys as in
    schema.STAGE123_CHAT (template, system, turn_template, answer_suffix, stop_strings, temperature,
    top_p, repetition_penalty, max_new_tokens)."""
    from .tokenizer import load_vocab
    check_output_path(out_path)
    if stage is not None and stage not in (1, 2, 3, 4):
        raise ConvertError(f"stage must be 1..4, got {stage!r}")
    m = TinyGPTV(phi2_dir, eva, blip2, stage_file, stage=stage, image_size=image_size, vision_layers=vision_layers,
                 vision_head_size=vision_head_size, vision_heads=vision_heads, qformer_head_size=qformer_head_size,
                 qformer_heads=qformer_heads, cross_attention_freq=cross_attention_freq, lora_alpha=lora_alpha)
    vocab = load_vocab(m.phi.folder, m.phi.n_vocab, pre="phi-2")
    meta = m.metadata(vocab, chat=chat, name=name)
    write_with_outtype(out_path, schema.ARCH_TINYGPTV, meta, m.planned(), outtype, progress)
    return out_path
