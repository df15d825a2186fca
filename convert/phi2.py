"""Phi-2 checkpoints in their three layouts -> canonical tensors -> GGUF (general.architecture = phi2).

Layouts (architecture spec section 5.7):
- "4.36": transformers 4.36 `model.layers.N.self_attn.query_key_value` with rows interleaved per head
  ([head0: q, k, v][head1: q, k, v]...); this is what TinyGPT-V was trained on.
- "4.37": transformers >= 4.37 separate `self_attn.q_proj/k_proj/v_proj` (optionally q/k_layernorm).
- "msft": Microsoft's original `transformer.h.N.mixer.Wqkv` with rows [q; k; v].
The GGUF always holds attn_qkv rows in [q(all heads); k; v] order.
"""

import os

from . import ConvertError
from . import schema
from .checkpoint import open_hf_weights, read_json
from .writer import Metadata, Planned, check_output_path, write_with_outtype

LAYOUT_436 = "4.36"
LAYOUT_437 = "4.37"
LAYOUT_MSFT = "msft"

_GLOBAL = {
    LAYOUT_436: {"embed": "model.embed_tokens.weight", "final": "model.final_layernorm", "head": "lm_head"},
    LAYOUT_437: {"embed": "model.embed_tokens.weight", "final": "model.final_layernorm", "head": "lm_head"},
    LAYOUT_MSFT: {"embed": "transformer.embd.wte.weight", "final": "lm_head.ln", "head": "lm_head.linear"},
}
_LAYER = {   # canonical part -> module name inside layer i (without .weight/.bias)
    LAYOUT_436: {"ln": "model.layers.{i}.input_layernorm", "dense": "model.layers.{i}.self_attn.dense",
                 "fc1": "model.layers.{i}.mlp.fc1", "fc2": "model.layers.{i}.mlp.fc2",
                 "qkv": "model.layers.{i}.self_attn.query_key_value",
                 "q_norm": "model.layers.{i}.self_attn.q_layernorm", "k_norm": "model.layers.{i}.self_attn.k_layernorm"},
    LAYOUT_437: {"ln": "model.layers.{i}.input_layernorm", "dense": "model.layers.{i}.self_attn.dense",
                 "fc1": "model.layers.{i}.mlp.fc1", "fc2": "model.layers.{i}.mlp.fc2",
                 "q": "model.layers.{i}.self_attn.q_proj", "k": "model.layers.{i}.self_attn.k_proj",
                 "v": "model.layers.{i}.self_attn.v_proj",
                 "q_norm": "model.layers.{i}.self_attn.q_layernorm", "k_norm": "model.layers.{i}.self_attn.k_layernorm"},
    LAYOUT_MSFT: {"ln": "transformer.h.{i}.ln", "dense": "transformer.h.{i}.mixer.out_proj",
                  "fc1": "transformer.h.{i}.mlp.fc1", "fc2": "transformer.h.{i}.mlp.fc2",
                  "qkv": "transformer.h.{i}.mixer.Wqkv"},
}
# buffers some savers include; they carry no weights
_IGNORED_SUFFIXES = (".inv_freq", ".masked_bias", ".attn.bias", "rotary_emb.inv_freq")


def deinterleave_qkv(x, n_head):
    """Rows [head][q,k,v][d] (4.36) -> [q(all heads); k; v]. Works for weights [3*H*D, C] and biases."""
    rest = x.shape[1:]
    d = x.shape[0] // (3 * n_head)
    return x.reshape(n_head, 3, d, *rest).transpose(0, 1).reshape(x.shape)


def _first(cfg, names, default=None):
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
        rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if isinstance(rp, dict) and n in rp and rp[n] is not None:
            return rp[n]
    return default


class Phi2:
    """A Phi-2 checkpoint folder: hyperparameters, layout and canonical float32 tensors."""

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        if not os.path.isdir(self.folder):
            raise ConvertError(f"Phi-2 folder not found: {self.folder}")
        self.config = read_json(os.path.join(self.folder, "config.json"), "Phi-2 config")
        self.store = open_hf_weights(self.folder)
        self.layout = self._detect_layout()
        self._read_hparams()
        self._check_tensors()

    # ---------------------------------------------------------------------------------- discovery
    def _detect_layout(self):
        keys = self.store.keys()
        if any(k.endswith("self_attn.query_key_value.weight") for k in keys):
            return LAYOUT_436
        if any(k.endswith("self_attn.q_proj.weight") for k in keys):
            return LAYOUT_437
        if any(k.endswith("mixer.Wqkv.weight") for k in keys):
            return LAYOUT_MSFT
        sample = sorted(keys)[:5]
        raise ConvertError(f"{self.folder}: not a Phi-2 checkpoint (no query_key_value, q_proj or Wqkv weights; "
                           f"first keys: {sample})")

    def _read_hparams(self):
        cfg = self.config
        g = _GLOBAL[self.layout]
        if g["embed"] not in self.store or len(self.store.shape(g["embed"])) != 2:
            raise ConvertError(f"{self.folder}: missing or malformed token embedding {g['embed']!r}")
        self.n_vocab, self.n_embd = self.store.shape(g["embed"])
        cfg_embd = _first(cfg, ["hidden_size", "n_embd"])
        if cfg_embd is not None and int(cfg_embd) != self.n_embd:
            raise ConvertError(f"config.json hidden_size {cfg_embd} != embedding width {self.n_embd}")
        self.n_head = _first(cfg, ["num_attention_heads", "n_head"])
        if not isinstance(self.n_head, int) or self.n_head <= 0 or self.n_embd % self.n_head:
            raise ConvertError(f"config.json num_attention_heads {self.n_head!r} does not divide the width {self.n_embd}")
        n_kv = _first(cfg, ["num_key_value_heads", "n_head_kv"], self.n_head)
        if n_kv != self.n_head:
            raise ConvertError(f"config.json num_key_value_heads {n_kv} != num_attention_heads {self.n_head} "
                               "(grouped-query attention is not a Phi-2 feature)")
        self.head_dim = self.n_embd // self.n_head
        if _first(cfg, ["rotary_dim"]) is not None:
            self.n_rot = int(_first(cfg, ["rotary_dim"]))
        else:
            self.n_rot = int(float(_first(cfg, ["partial_rotary_factor"], 0.5)) * self.head_dim)
        if not 0 < self.n_rot <= self.head_dim or self.n_rot % 2:
            raise ConvertError(f"rotary dimension {self.n_rot} is invalid for head size {self.head_dim}")
        self.rope_base = float(_first(cfg, ["rope_theta"], 10000.0))
        self.eps = float(_first(cfg, ["layer_norm_eps", "layer_norm_epsilon"], 1e-5))
        self.ctx = int(_first(cfg, ["max_position_embeddings", "n_positions"], 2048))
        layer_tpl = _LAYER[self.layout]["ln"] + ".weight"
        prefix, suffix = layer_tpl.split("{i}")
        found = {int(k[len(prefix):-len(suffix)]) for k in self.store.keys()
                 if k.startswith(prefix) and k.endswith(suffix) and k[len(prefix):-len(suffix)].isdigit()}
        self.n_layer = int(_first(cfg, ["num_hidden_layers", "n_layer"], len(found)))
        fc1 = _LAYER[self.layout]["fc1"].format(i=0) + ".weight"
        self.n_ff = self.store.shape(fc1)[0] if fc1 in self.store else None
        if self.n_ff is None:
            raise ConvertError(f"{self.folder}: missing tensor {fc1!r}")
        q_norm = _LAYER[self.layout].get("q_norm", "").format(i=0) + ".weight"
        self.has_qk_norm = q_norm in self.store

    def expected(self):
        """{checkpoint key: shape} for every tensor this layout must have."""
        E, F, V, L = self.n_embd, self.n_ff, self.n_vocab, _LAYER[self.layout]
        g = _GLOBAL[self.layout]
        exp = {g["embed"]: (V, E), g["final"] + ".weight": (E,), g["final"] + ".bias": (E,),
               g["head"] + ".weight": (V, E), g["head"] + ".bias": (V,)}
        for i in range(self.n_layer):
            f = lambda part: L[part].format(i=i)  # noqa: E731
            exp.update({f("ln") + ".weight": (E,), f("ln") + ".bias": (E,),
                        f("dense") + ".weight": (E, E), f("dense") + ".bias": (E,),
                        f("fc1") + ".weight": (F, E), f("fc1") + ".bias": (F,),
                        f("fc2") + ".weight": (E, F), f("fc2") + ".bias": (E,)})
            if "qkv" in L:
                exp.update({f("qkv") + ".weight": (3 * E, E), f("qkv") + ".bias": (3 * E,)})
            else:
                for p in ("q", "k", "v"):
                    exp.update({f(p) + ".weight": (E, E), f(p) + ".bias": (E,)})
            if self.has_qk_norm:
                for p in ("q_norm", "k_norm"):
                    exp.update({f(p) + ".weight": (self.head_dim,), f(p) + ".bias": (self.head_dim,)})
        return exp

    def _check_tensors(self):
        exp = self.expected()
        have = set(self.store.keys())
        if _GLOBAL[self.layout]["head"] + ".weight" not in have and self.config.get("tie_word_embeddings"):
            exp.pop(_GLOBAL[self.layout]["head"] + ".weight")
            exp.pop(_GLOBAL[self.layout]["head"] + ".bias", None)
        check_tensor_set(f"Phi-2 checkpoint {self.folder} (layout {self.layout})", exp,
                         {k: self.store.shape(k) for k in have if not k.endswith(_IGNORED_SUFFIXES)})

    # ----------------------------------------------------------------------------------- tensors
    def raw(self, key):
        import torch
        return self.store.get(key).to(torch.float32)

    def global_tensor(self, part, wb=None):
        g = _GLOBAL[self.layout]
        if part == "embed":
            return self.raw(g["embed"])
        if part == "head" and g["head"] + ".weight" not in self.store:
            if wb == "weight":
                return self.raw(g["embed"])
            import torch
            return torch.zeros(self.n_vocab)
        return self.raw(f"{g[part]}.{wb}")

    def layer_tensor(self, i, part, wb):
        return self.raw(f"{_LAYER[self.layout][part].format(i=i)}.{wb}")

    def qkv(self, i, wb, delta_interleaved=None):
        """attn_qkv weight or bias in [q; k; v] order. `delta_interleaved` (optional, weight only) is
        added in the per-head interleaved order of the 4.36 layout (a TinyGPT-V LoRA update) before
        any reordering of a 4.36 checkpoint's rows."""
        import torch
        L = _LAYER[self.layout]
        if self.layout == LAYOUT_436:
            x = self.layer_tensor(i, "qkv", wb)
            if delta_interleaved is not None:
                x = x + delta_interleaved
            return deinterleave_qkv(x, self.n_head)
        if self.layout == LAYOUT_MSFT:
            x = self.layer_tensor(i, "qkv", wb)
        else:
            x = torch.cat([self.raw(f"{L[p].format(i=i)}.{wb}") for p in ("q", "k", "v")], dim=0)
        if delta_interleaved is not None:
            x = x + deinterleave_qkv(delta_interleaved, self.n_head)
        return x

    # ---------------------------------------------------------------------------------- metadata
    def add_lm_metadata(self, meta, arch):
        k = lambda name: schema.lm_key(arch, name)  # noqa: E731
        meta.u32(k(schema.LM_CONTEXT_LENGTH), self.ctx)
        meta.u32(k(schema.LM_EMBEDDING_LENGTH), self.n_embd)
        meta.u32(k(schema.LM_FEED_FORWARD_LENGTH), self.n_ff)
        meta.u32(k(schema.LM_BLOCK_COUNT), self.n_layer)
        meta.u32(k(schema.LM_HEAD_COUNT), self.n_head)
        meta.u32(k(schema.LM_HEAD_COUNT_KV), self.n_head)
        meta.f32(k(schema.LM_LAYER_NORM_EPS), self.eps)
        meta.u32(k(schema.LM_ROPE_DIMENSION_COUNT), self.n_rot)
        if self.rope_base != 10000.0:
            meta.f32(k(schema.LM_ROPE_FREQ_BASE), self.rope_base)

    def planned(self, qk_norm=None):
        """The language-model tensors as Planned entries. `qk_norm`: optional callable(i, 'q'|'k', 'weight'|'bias')
        overriding this checkpoint's own q/k norms (the TinyGPT-V converter passes its own)."""
        E, F, V, D = self.n_embd, self.n_ff, self.n_vocab, self.head_dim
        P = []
        P.append(Planned(schema.TOKEN_EMBD, (V, E), lambda: self.global_tensor("embed")))
        for i in range(self.n_layer):
            b = lambda name, i=i: schema.blk(i, name)  # noqa: E731
            for wb in ("weight", "bias"):
                P.append(Planned(f"{b(schema.ATTN_NORM)}.{wb}", (E,), lambda i=i, wb=wb: self.layer_tensor(i, "ln", wb)))
            if self.has_qk_norm and qk_norm is None:
                for which, name in (("q", schema.ATTN_Q_NORM), ("k", schema.ATTN_K_NORM)):
                    for wb in ("weight", "bias"):
                        P.append(Planned(f"{b(name)}.{wb}", (D,),
                                         lambda i=i, which=which, wb=wb: self.layer_tensor(i, which + "_norm", wb)))
            P.append(Planned(f"{b(schema.ATTN_QKV)}.weight", (3 * E, E), lambda i=i: self.qkv(i, "weight")))
            P.append(Planned(f"{b(schema.ATTN_QKV)}.bias", (3 * E,), lambda i=i: self.qkv(i, "bias")))
            for wb, shape in (("weight", (E, E)), ("bias", (E,))):
                P.append(Planned(f"{b(schema.ATTN_OUTPUT)}.{wb}", shape, lambda i=i, wb=wb: self.layer_tensor(i, "dense", wb)))
            for wb, shape in (("weight", (F, E)), ("bias", (F,))):
                P.append(Planned(f"{b(schema.FFN_UP)}.{wb}", shape, lambda i=i, wb=wb: self.layer_tensor(i, "fc1", wb)))
            for wb, shape in (("weight", (E, F)), ("bias", (E,))):
                P.append(Planned(f"{b(schema.FFN_DOWN)}.{wb}", shape, lambda i=i, wb=wb: self.layer_tensor(i, "fc2", wb)))
        for wb in ("weight", "bias"):
            P.append(Planned(f"{schema.OUTPUT_NORM}.{wb}", (E,), lambda wb=wb: self.global_tensor("final", wb)))
        P.append(Planned(f"{schema.OUTPUT}.weight", (V, E), lambda: self.global_tensor("head", "weight")))
        P.append(Planned(f"{schema.OUTPUT}.bias", (V,), lambda: self.global_tensor("head", "bias")))
        return P

    def model_name(self):
        name = self.config.get("_name_or_path")
        if isinstance(name, str) and name.strip():
            return os.path.basename(name.rstrip("/"))
        return os.path.basename(os.path.abspath(self.folder).rstrip("/")) or "phi-2"


def check_tensor_set(what, expected, have, unexpected_ok=False):
    """One ConvertError listing every missing, mis-shaped and (unless allowed) unexpected tensor."""
    missing = sorted(k for k in expected if k not in have)
    wrong = sorted(f"{k} {tuple(have[k])} (expected {tuple(expected[k])})"
                   for k in expected if k in have and tuple(have[k]) != tuple(expected[k]))
    extra = [] if unexpected_ok else sorted(k for k in have if k not in expected)
    if missing or wrong or extra:
        lines = [f"{what} does not match the expected tensors:"]
        for title, items in (("missing", missing), ("wrong shape", wrong), ("unexpected", extra)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise ConvertError("\n".join(lines))


def convert_phi2(folder, out_path, outtype="f16", progress=True, name=None):
    """Converts a Phi-2 folder (any layout) to a llama.cpp-compatible GGUF (architecture phi2)."""
    from .tokenizer import load_vocab
    check_output_path(out_path)
    phi = Phi2(folder)
    vocab = load_vocab(phi.folder, phi.n_vocab, pre="phi-2")
    meta = Metadata()
    meta.str(schema.GENERAL_NAME, name or phi.model_name())
    phi.add_lm_metadata(meta, schema.ARCH_PHI2)
    vocab.add_to(meta)
    write_with_outtype(out_path, schema.ARCH_PHI2, meta, phi.planned(), outtype, progress)
    return out_path
