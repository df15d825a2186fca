"""Writes the trained demo model in TinyGPT-V's release formats and key names.

    python tools/demo/export.py --trained /work/demo_ckpt/trained.pt --out /work/demo_ckpt

  OUT/eva_vit_g.pth                     raw ViT state dict (cls_token, pos_embed, patch_embed.proj.*,
                                        blocks.{i}.*), plus one extra unused last block like the real
                                        40-block file (the model uses blocks - 1)
  OUT/blip2_pretrained_flant5xxl.pth    {"model": {ln_vision.*, query_tokens, Qformer.bert.*, t5_proj.*}}
  OUT/phi2/                             transformers-4.36 Phi layout: config.json, pytorch_model.bin
                                        (query_key_value per-head interleaved), tokenizer.model
  OUT/TinyGPT-V_for_Stage4.pth          {"model": llama_proj*, the trained norm weights and LoRA A/B of
                                        query_key_value and dense under llama_model.base_model.model.*,
                                        "config": {"model": {"arch": "minigpt_v2", ...}}}

The decoder is trained without LoRA. To exercise the LoRA merge of a real checkpoint, the export
draws seeded random LoRA factors (A, B) and stores W_base = W_trained - (alpha/r) * B @ A in the base
folder, so base + LoRA merged equals the trained weights (fp32 throughout). The base folder's
input/final LayerNorm weights are the untrained ones (1.0): the stage file's trained values must win,
as in the real release. q/k LayerNorm and the post-attention RMSNorm are not in the base folder
(TinyGPT-V adds them); their biases are 0.

At the end the files are loaded back the way TinyGPT-V loads them (base < BLIP-2 < stage file, LoRA
merged) and compared with the trained state dict.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import DemoConfig, TinyGPTVDemo  # noqa: E402

LORA_R = 16
LORA_ALPHA = 4.0          # scaling alpha / r = 0.25, as the real release (16 / 64)
LORA_REL = 0.25           # rms of the LoRA delta relative to the rms of the weight it modifies
LORA_PREFIX = "llama_model.base_model.model."
SEED = 20240119


def _save(obj, path: str):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_bytes(data: bytes, path: str):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def phi_config(c: DemoConfig) -> dict:
    """transformers 4.36 PhiConfig fields."""
    return {
        "_name_or_path": "tinygptv-demo/phi-2-mini",
        "architectures": ["PhiForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "embd_pdrop": 0.0,
        "hidden_act": "gelu_new",
        "hidden_size": c.n_embd,
        "initializer_range": 0.02,
        "intermediate_size": c.n_ffn,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048,
        "model_type": "phi",
        "num_attention_heads": c.n_head,
        "num_hidden_layers": c.n_layer,
        "num_key_value_heads": c.n_head,
        "partial_rotary_factor": c.rotary_factor,
        "qk_layernorm": False,
        "resid_pdrop": 0.1,
        "rope_scaling": None,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.36.2",
        "use_cache": True,
        "vocab_size": c.vocab_size,
    }


def stage_config(c: DemoConfig) -> dict:
    return {"model": {
        "arch": "minigpt_v2", "model_type": "pretrain", "image_size": c.image_size,
        "drop_path_rate": 0, "use_grad_checkpoint": False, "vit_precision": "fp32",
        "freeze_vit": True, "freeze_qformer": True, "num_query_token": c.n_query,
        "lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "max_txt_len": 500, "end_sym": "###",
        "chat_template": True, "prompt_template": "[INST] {} [/INST]",
        "llama_model": "phi2", "ckpt": "",
        # Not in the real config: the demo's dimensions that the weights do not reveal.
        "vit_heads": c.vit_heads, "qformer_heads": c.qf_heads, "cross_attention_freq": c.cross_freq,
    }}


def export(trained: str, out: str) -> dict:
    state = torch.load(trained, map_location="cpu", weights_only=False)
    c = DemoConfig(**state["config"])
    sd = {k: v.float().clone() for k, v in state["model"].items()}
    g = torch.Generator().manual_seed(SEED)
    os.makedirs(os.path.join(out, "phi2"), exist_ok=True)

    # --- EVA ViT: raw state dict, one extra (unused) block at the end
    vit = {k[len("visual_encoder."):]: v for k, v in sd.items() if k.startswith("visual_encoder.")}
    extra = VisionExtra(c, g)
    for k, v in extra.items():
        vit[f"blocks.{c.vit_depth}.{k}"] = v
    _save(vit, os.path.join(out, "eva_vit_g.pth"))

    # --- BLIP-2: ln_vision, queries, Q-Former (+ position_ids buffer, + the T5 projection it also holds)
    blip = {k: v for k, v in sd.items() if k.startswith(("ln_vision.", "query_tokens", "Qformer."))}
    blip["Qformer.bert.embeddings.position_ids"] = torch.arange(512, dtype=torch.long)[None]
    blip["t5_proj.weight"] = torch.randn(c.proj_inner, c.qf_width, generator=g) * 0.02
    blip["t5_proj.bias"] = torch.zeros(c.proj_inner)
    _save({"model": blip}, os.path.join(out, "blip2_pretrained_flant5xxl.pth"))

    # --- Phi-2 base folder and the stage file (LoRA factors, trained norms, projector)
    scale = LORA_ALPHA / LORA_R
    base, stage = {}, {}
    for k, v in sd.items():
        if not k.startswith("llama_model."):
            continue
        name = k[len("llama_model."):]                        # e.g. model.layers.0.self_attn.dense.weight
        if name.endswith(("q_layernorm.weight", "k_layernorm.weight", "post_layernorm.weight")):
            stage[LORA_PREFIX + name] = v
        elif name.endswith(("q_layernorm.bias", "k_layernorm.bias")):
            if v.abs().max() != 0:
                raise ValueError(f"{k} must stay 0 (TinyGPT-V never trains it), max |v| = {v.abs().max()}")
        elif name.endswith(("input_layernorm.weight", "final_layernorm.weight")):
            stage[LORA_PREFIX + name] = v
            base[name] = torch.ones_like(v)
        elif name.endswith(("query_key_value.weight", "dense.weight")) and ".self_attn." in name:
            out_f, in_f = v.shape
            a = (torch.rand(LORA_R, in_f, generator=g) * 2 - 1) / in_f ** 0.5      # kaiming-uniform-like
            b = torch.randn(out_f, LORA_R, generator=g)
            delta = scale * (b @ a)
            b *= LORA_REL * v.pow(2).mean().sqrt() / delta.pow(2).mean().sqrt()
            delta = scale * (b @ a)
            base[name] = v - delta
            mod = name[: -len(".weight")]
            stage[LORA_PREFIX + mod + ".lora_A.weight"] = a
            stage[LORA_PREFIX + mod + ".lora_B.weight"] = b
        else:
            base[name] = v
    for k in ("llama_proj.weight", "llama_proj.bias", "llama_proj2.weight", "llama_proj2.bias"):
        stage[k] = sd[k]
    stage["Qformer.bert.embeddings.position_ids"] = torch.arange(512, dtype=torch.long)[None]

    phi_dir = os.path.join(out, "phi2")
    _save(base, os.path.join(phi_dir, "pytorch_model.bin"))
    cfg_tmp = os.path.join(phi_dir, "config.json.tmp")
    with open(cfg_tmp, "w") as f:
        json.dump(phi_config(c), f, indent=2)
    os.replace(cfg_tmp, os.path.join(phi_dir, "config.json"))
    _write_bytes(state["tokenizer_model"], os.path.join(phi_dir, "tokenizer.model"))
    _save({"model": stage, "config": stage_config(c), "epoch": 0, "scaler": None},
          os.path.join(out, "TinyGPT-V_for_Stage4.pth"))

    err = check_roundtrip(out, c, sd)
    return {"max_abs_diff": err, "vit_blocks_in_file": c.vit_depth + 1}


def VisionExtra(c: DemoConfig, g: torch.Generator) -> dict:
    """Random weights for the unused last ViT block (the real file's block 39 is never run either)."""
    w, h = c.vit_width, c.vit_mlp
    r = lambda *s: torch.randn(*s, generator=g) * 0.02  # noqa: E731
    return {
        "norm1.weight": torch.ones(w), "norm1.bias": torch.zeros(w),
        "attn.qkv.weight": r(3 * w, w), "attn.q_bias": r(w), "attn.v_bias": r(w),
        "attn.proj.weight": r(w, w), "attn.proj.bias": r(w),
        "norm2.weight": torch.ones(w), "norm2.bias": torch.zeros(w),
        "mlp.fc1.weight": r(h, w), "mlp.fc1.bias": r(h), "mlp.fc2.weight": r(w, h), "mlp.fc2.bias": r(w),
    }


def load_release(out: str, c: DemoConfig) -> dict:
    """Rebuilds the model's state dict from the four release files, as TinyGPT-V's loader does:
    ViT (first vit_depth blocks) < BLIP-2 < base Phi-2 < stage file, LoRA merged W + (alpha/r) B A."""
    sd = {}
    vit = torch.load(os.path.join(out, "eva_vit_g.pth"), map_location="cpu")
    for k, v in vit.items():
        if k.startswith("blocks.") and int(k.split(".")[1]) >= c.vit_depth:
            continue
        sd["visual_encoder." + k] = v
    blip = torch.load(os.path.join(out, "blip2_pretrained_flant5xxl.pth"), map_location="cpu")["model"]
    for k, v in blip.items():
        if k.startswith(("ln_vision.", "query_tokens", "Qformer.")) and not k.endswith("position_ids"):
            sd[k] = v
    base = torch.load(os.path.join(out, "phi2", "pytorch_model.bin"), map_location="cpu")
    for k, v in base.items():
        sd["llama_model." + k] = v.clone()
    st = torch.load(os.path.join(out, "TinyGPT-V_for_Stage4.pth"), map_location="cpu", weights_only=False)
    scale = st["config"]["model"]["lora_alpha"] / st["config"]["model"]["lora_r"]
    for k, v in st["model"].items():
        if k.endswith("position_ids"):
            continue
        if k.startswith(LORA_PREFIX):
            name = "llama_model." + k[len(LORA_PREFIX):]
            if ".lora_A." in name:
                mod = name.split(".lora_A.")[0]
                b = st["model"][k.replace(".lora_A.", ".lora_B.")]
                sd[mod + ".weight"] = sd[mod + ".weight"] + scale * (b @ v)
            elif ".lora_B." not in name:
                sd[name] = v
        else:
            sd[k] = v
    for i in range(c.n_layer):                # TinyGPT-V's q/k LayerNorm biases: created as 0, never trained
        for n in ("q_layernorm", "k_layernorm"):
            sd[f"llama_model.model.layers.{i}.self_attn.{n}.bias"] = torch.zeros(c.n_embd // c.n_head)
    return sd


def check_roundtrip(out: str, c: DemoConfig, trained: dict) -> float:
    sd = load_release(out, c)
    model = TinyGPTVDemo(c)
    model.load_state_dict(sd, strict=True)          # every parameter present, nothing extra
    err = max((sd[k] - trained[k]).abs().max().item() for k in trained)
    if err > 1e-5:
        raise ValueError(f"exported files do not reproduce the trained weights: max |diff| = {err}")
    return err


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trained", required=True, help="trained.pt written by train.py")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    r = export(args.trained, args.out)
    print(f"wrote {args.out}: eva_vit_g.pth ({r['vit_blocks_in_file']} blocks), blip2_pretrained_flant5xxl.pth, "
          f"phi2/, TinyGPT-V_for_Stage4.pth; merged == trained (max |diff| {r['max_abs_diff']:.2e})")


if __name__ == "__main__":
    main()
