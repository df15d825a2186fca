"""Trains the demo TinyGPT-V from scratch on the generator's pictures and chats (seeded, 2 CPU threads).

    python tools/demo/train.py --out demo_ckpt

Writes OUT/phi2/tokenizer.model (SentencePiece) and OUT/trained.pt ({"config", "model"}: the full
state dict, keys as in the TinyGPT-V model object without LoRA). Loss on answer tokens only; prompts
in the stage-4 chat template without BOS, exactly as at inference; plus the training-only losses (not
exported): the per-query AuxHeads on the image embeddings, the per-patch PatchHead on the ViT
outputs, the Q-Former routing target (CrossAttentionTarget) and, with --kind-weight, the kind-only
KindHeads. These heads are not saved: a run with --init-from starts them afresh.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

# Idle OpenMP workers sleep instead of spinning: on a shared 2-core machine spinning threads
# make every step several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data import TRAIN_WEIGHTS, Encoder, prefix_ids, train_batch  # noqa: E402
from model import DemoConfig, TinyGPTVDemo, count_params  # noqa: E402
from tokenizer import train_tokenizer  # noqa: E402


class AuxHeads(torch.nn.Module):
    """Training-only heads on the image embeddings the decoder reads (one per Q-Former query, query i
    = board cell i, shapes assigned to the nearest free cell, see data.query_targets): the content
    (nothing or colour x kind) and the box coordinates as 101-way classifications. They make each
    embedding say what it holds and where, so the decoder has something to read from the first steps;
    they are not part of the exported model."""

    def __init__(self, dim: int, n_cls: int = 13, n_bins: int = 101):
        super().__init__()
        self.n_bins = n_bins
        self.cls = torch.nn.Linear(dim, n_cls)
        self.box = torch.nn.Linear(dim, 4 * n_bins)

    def loss(self, img_emb, cells, boxes, sigma: float = 1.0):
        """img_emb [N, Q, D]; cells [N, Q]; boxes [N, Q, 4] (-100 = empty cell)."""
        l_cls = F.cross_entropy(self.cls(img_emb).flatten(0, 1), cells.flatten())
        occ = cells.flatten() > 0
        logp = F.log_softmax(self.box(img_emb.flatten(0, 1)[occ]).view(-1, 4, self.n_bins), dim=-1)
        tgt = boxes.flatten(0, 1)[occ].float()                             # [M, 4]
        bins = torch.arange(self.n_bins, dtype=torch.float32)
        soft = torch.softmax(-0.5 * ((bins - tgt[..., None]) / sigma) ** 2, dim=-1)   # [M, 4, 101]
        l_box = -(soft * logp).sum(-1).mean()
        return l_cls, l_box


class PatchHead(torch.nn.Module):
    """Training-only linear probe on the ViT's output tokens (after ln_vision, what the Q-Former reads;
    CLS left out): per patch, what covers it (background or colour x kind, data.patch_targets). Without
    it the ViT learns colour and kind only through the decoder's answers, slowly: the per-query heads
    sat at their prior and the picture gain stayed under 1 nat; the probe's target is learnt within a
    hundred steps. It is weighted to help early and fade (patch_weight_at): later the answers decide
    what the vision side keeps. Not part of the exported model."""

    def __init__(self, model, cfg, n_cls: int = 13):
        super().__init__()
        self.head = torch.nn.Linear(cfg.vit_width, n_cls)
        self.seen = {}
        model.ln_vision.register_forward_hook(lambda mod, inp, out: self.seen.update(e=out))

    def loss(self, patches):
        """patches [N, n_patches, 13]: soft targets for the last image batch through the model."""
        logp = F.log_softmax(self.head(self.seen["e"][:, 1:]), dim=-1)
        return -(patches * logp).sum(-1).mean()


class KindHeads(torch.nn.Module):
    """Training-only 3-way heads for the kind of a shape (circle, square, triangle) alone: one per
    Q-Former query holding a shape (on the image embeddings) and one per ViT patch that a shape touches
    (on ln_vision's output, the patch's kind the one of the shapes covering it, by area). Colour is
    read off a single patch, kind only off the outline: with kind folded into the 13-way targets above
    the model learnt colour (a linear probe reads it off the embeddings 96.5% of the time) but not kind
    (51%, chance 33%), and named every shape of a picture as one kind. Here a patch on a shape's edge is
    asked for the kind with the shape's full weight, however little of it the patch covers."""

    def __init__(self, cfg, patch_head):
        super().__init__()
        self.query = torch.nn.Linear(cfg.n_embd, 3)
        self.patch = torch.nn.Linear(cfg.vit_width, 3)
        self.seen = patch_head.seen

    def loss(self, img_emb, cells, patches, touch: float = 0.02):
        """img_emb [N, Q, D]; cells [N, Q] (1 + 3 * colour + kind, 0 = empty); patches [N, P, 13]."""
        occ = cells > 0
        l_query = F.cross_entropy(self.query(img_emb[occ]), (cells[occ] - 1) % 3)
        mass = patches[..., 1:].reshape(*patches.shape[:2], -1, 3).sum(-2)       # [N, P, 3]
        tot = mass.sum(-1)
        hit = tot >= touch
        logp = F.log_softmax(self.patch(self.seen["e"][:, 1:][hit]), dim=-1)
        l_patch = -((mass[hit] / tot[hit, None]) * logp).sum(-1).mean()
        return l_query, l_patch


def patch_weight_at(step: int, weight: float, fade: int, floor: float) -> float:
    """Full weight at the start, cosine down to floor * weight at step `fade`, then constant."""
    t = min(1.0, step / max(1, fade))
    return weight * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def cell_attention_target(image_size: int, patch: int, grid: int = 4) -> torch.Tensor:
    """[grid*grid, n_patches]: for board cell i (Q-Former query i), the share of each patch's area that
    lies in the cell, normalised: where that query should look."""
    n = image_size // patch
    pe, ce = np.arange(n + 1) / n, np.arange(grid + 1) / grid
    ov = np.maximum(0, np.minimum(pe[None, 1:], ce[1:, None]) - np.maximum(pe[None, :-1], ce[:-1, None]))  # [grid, n]
    t = np.einsum("ap,bq->abpq", ov, ov).reshape(grid * grid, n * n)
    return torch.tensor(t / t.sum(1, keepdims=True), dtype=torch.float32)


class CrossAttentionTarget:
    """Training-only loss on the Q-Former's first cross-attention: each query's attention over the
    patches (CLS left out), per head, against the patches of the shape it holds
    (data.query_attention_targets) or, holding nothing, of its cell (cell_attention_target). With
    shapes placed freely (not one per patch), the queries otherwise take a long time to find their
    cells; and a query averaging its whole cell (about four patches, mostly background) passed on
    its shape's colour no better than chance."""

    def __init__(self, model, cfg):
        self.attn = model.Qformer.bert.encoder.layer[0].crossattention
        self.target = cell_attention_target(cfg.image_size, cfg.patch_size)
        self.seen = {}
        self.attn.register_forward_hook(lambda mod, inp, out: self.seen.update(h=inp[0], ctx=inp[1]))

    def loss(self, shape_target=None):
        """shape_target [N, queries, patches] (data.query_attention_targets): for the queries holding a
        shape, look at that shape's patches instead of the whole cell (rows of 0 keep the cell)."""
        target = self.target
        if shape_target is not None:
            held = shape_target.sum(-1, keepdim=True) > 0
            target = torch.where(held, shape_target, self.target)[:, None]     # [N, 1, queries, patches]
        sa = self.attn._modules["self"]
        h, ctx = self.seen["h"], self.seen["ctx"][:, 1:]
        B, T, C = h.shape
        hd = C // sa.heads
        q = sa.query(h).view(B, T, sa.heads, hd).transpose(1, 2)
        k = sa.key(ctx).view(B, -1, sa.heads, hd).transpose(1, 2)
        logp = F.log_softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1)      # [B, heads, queries, patches]
        return -(target * logp).sum(-1).mean()


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def save(path, cfg, model, sp, args):
    tmp = path + ".tmp"
    torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "args": vars(args),
                "tokenizer_model": sp.serialized_model_proto()}, tmp)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--images", type=int, default=24, help="pictures per step")
    ap.add_argument("--chats", type=int, default=2, help="chats (of one to three questions) per picture")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--stop-after", type=int, default=0,
                    help="stop after this many steps (the schedule is still that of --steps)")
    ap.add_argument("--init-from", help="start from the weights of an earlier trained.pt (second phase)")
    ap.add_argument("--vision-delay", type=int, default=0, help="steps before the vision side trains")
    ap.add_argument("--vision-ramp", type=int, default=1, help="steps of its learning-rate ramp")
    ap.add_argument("--proj-lr-scale", type=float, default=0.1, help="learning-rate factor of llama_proj/llama_proj2")
    ap.add_argument("--aux-weight", type=float, default=1.0,
                    help="weight of the per-cell auxiliary losses on the image embeddings (0 = off)")
    ap.add_argument("--patch-weight", type=float, default=1.0,
                    help="initial weight of the per-patch content loss on the ViT outputs (0 = off)")
    ap.add_argument("--patch-fade", type=float, default=0.5,
                    help="fraction of --steps over which the per-patch weight fades to --patch-floor of it")
    ap.add_argument("--patch-floor", type=float, default=0.1)
    ap.add_argument("--kind-weight", type=float, default=0.0,
                    help="weight of the kind-only losses per query and per touched patch (KindHeads; 0 = off)")
    ap.add_argument("--type-weights", default="",
                    help="question types drawn more or less often than data.TRAIN_WEIGHTS, e.g. color=5,shape=3")
    ap.add_argument("--route", choices=("shape", "cell"), default="shape",
                    help="routing target of a query holding a shape: that shape's patches, or its whole cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--save-every", type=int, default=0, help="also save OUT/trained_stepN.pt every N steps")
    ap.add_argument("--width", type=int, default=128, help="ViT, Q-Former and decoder width (head dim 64)")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (the ViT uses as many blocks)")
    ap.add_argument("--image-size", type=int, default=96, help="model input side (patch 16)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()

    sp = train_tokenizer(os.path.join(args.out, "phi2", "tokenizer.model"))
    w = args.width
    cfg = DemoConfig(vit_width=w, vit_heads=w // 64, vit_mlp=4 * w, vit_depth=args.layers,
                     qf_width=w, qf_heads=w // 64, qf_ffn=4 * w, proj_inner=2 * w,
                     n_embd=w, n_head=w // 64, n_ffn=4 * w, n_layer=args.layers,
                     image_size=args.image_size, vocab_size=sp.get_piece_size())
    model = TinyGPTVDemo(cfg)
    if args.init_from:
        prev = torch.load(args.init_from, map_location="cpu", weights_only=False)
        if prev["config"] != cfg.to_dict() or prev["tokenizer_model"] != sp.serialized_model_proto():
            raise ValueError(f"{args.init_from}: another configuration or tokenizer than this run's")
        model.load_state_dict(prev["model"])
        print(f"continuing from {args.init_from}", flush=True)
    print(f"params {count_params(model):,}  vocab {cfg.vocab_size}", flush=True)

    # The projector gets a smaller learning rate: with the full rate Adam quickly grows a picture-
    # independent component in its output until the picture's content is drowned out.
    # --vision-delay/--vision-ramp can keep the vision side (ViT, Q-Former, projector) frozen at its
    # random initialisation for a while and then ramp its learning rate up; with the auxiliary
    # per-cell heads (AuxHeads) this is no longer needed and both default to off.
    aux = AuxHeads(cfg.n_embd)
    route = CrossAttentionTarget(model, cfg)
    patch_head = PatchHead(model, cfg)
    kind_heads = KindHeads(cfg, patch_head)
    heads = [("aux." + n, p) for n, p in aux.named_parameters()] + \
            [("aux.patch." + n, p) for n, p in patch_head.named_parameters()] + \
            [("aux.kind." + n, p) for n, p in kind_heads.named_parameters()]
    groups = {}
    for n, p in list(model.named_parameters()) + heads:
        if not p.requires_grad:
            continue
        proj = n.startswith(("llama_proj.", "llama_proj2."))
        vision = not n.startswith(("llama_model.", "aux."))
        key = (vision, proj, p.ndim >= 2)
        groups.setdefault(key, []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": 0.01 if decay else 0.0, "vision": vision,
                              "lr_scale": args.proj_lr_scale if proj else 1.0}
                             for (vision, proj, decay), ps in sorted(groups.items())],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    enc = Encoder(sp)
    weights = dict(TRAIN_WEIGHTS)
    for item in filter(None, args.type_weights.split(",")):
        k, v = item.split("=")
        if k not in weights:
            raise ValueError(f"--type-weights: no question type {k!r}")
        weights[k] = float(v)
    before = prefix_ids(enc)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    ema = None
    for step in range(args.stop_after or args.steps):
        frozen = step < args.vision_delay
        vis = 0.0 if frozen else min(1.0, (step - args.vision_delay + 1) / args.vision_ramp)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup) * g["lr_scale"] * (vis if g["vision"] else 1.0)
        pixels, img_index, after, targets, cells, boxes, patches, shape_att = train_batch(
            rng, enc, args.images, args.chats, cfg.image_size, cfg.n_query, cfg.patch_size, weights)
        with torch.set_grad_enabled(not frozen):
            per_img = model.encode_image(pixels)
        img_emb = per_img[img_index]
        # Chats differ much in length (a "[grounding]" answer is ten times a "yes"): the rows go through
        # the decoder in two halves by length, each padded only to its own longest row.
        start = len(before) + cfg.n_query
        last = torch.where(targets >= 0, torch.arange(targets.shape[1]), -1).amax(1) + 1 - start
        loss = torch.zeros(())
        for idx in torch.argsort(last, stable=True).chunk(2):
            L = int(last[idx].max())
            logits = model(img_emb[idx], before, after[idx, :L])
            loss = loss + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[idx, :start + L].reshape(-1),
                                          ignore_index=-100, reduction="sum")
        loss = loss / (targets >= 0).sum()
        l_cls = l_box = l_att = torch.zeros(())
        if args.aux_weight > 0:
            l_cls, l_box = aux.loss(per_img, cells, boxes)
            l_att = route.loss(shape_att if args.route == "shape" else None)
        l_patch = patch_head.loss(patches) if args.patch_weight > 0 else torch.zeros(())
        w_patch = patch_weight_at(step, args.patch_weight, int(args.patch_fade * args.steps), args.patch_floor)
        l_kq = l_kp = torch.zeros(())
        if args.kind_weight > 0:
            l_kq, l_kp = kind_heads.loss(per_img, cells, patches)
        total = loss + args.aux_weight * (l_cls + l_box + l_att) + w_patch * l_patch + args.kind_weight * (l_kq + l_kp)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + [p for _, p in heads], 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % args.log_every == 0 or step == args.steps - 1:
            # picture gain: loss with every question paired with another picture minus the loss with
            # its own picture (both after this step's update): how much the answers use the picture
            with torch.no_grad():
                wrong = model(img_emb.detach().roll(args.chats, dims=0), before, after)
                wrong_loss = F.cross_entropy(wrong.reshape(-1, wrong.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100).item()
                right = model(img_emb.detach(), before, after)      # same (already updated) weights
                wrong_loss -= F.cross_entropy(right.reshape(-1, right.shape[-1]), targets.reshape(-1),
                                              ignore_index=-100).item()
            dt = time.time() - t0
            print(f"step {step:5d}  loss {loss.item():.4f}  ema {ema:.4f}  picture gain {wrong_loss:+.4f}  "
                  f"aux cls {l_cls.item():.3f} box {l_box.item():.3f} att {l_att.item():.3f} "
                  f"patch {l_patch.item():.3f} (w {w_patch:.2f}) kind {l_kq.item():.3f}/{l_kp.item():.3f}  "
                  f"lr {lr_at(step, args.steps, args.lr, args.warmup):.2e}  {dt / (step + 1):.3f} s/step  {dt / 60:.1f} min", flush=True)

        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < (args.stop_after or args.steps):
            save(os.path.join(args.out, f"trained_step{step + 1}.pt"), cfg, model, sp, args)

    out = os.path.join(args.out, "trained.pt")
    save(out, cfg, model, sp, args)
    print(f"saved {out}; wall time {(time.time() - t_start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
