"""Facts about the demo model's data generator, tokenizer and checkpoint export (tools/demo)."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "demo"))

import questions as Q  # noqa: E402
import shapes as S  # noqa: E402

N_SCENES = 300
RENDER = 128


def scenes(seed=7, n=N_SCENES, size_range=S.SIZE_RANGE_A):
    rng = np.random.default_rng(seed)
    return [S.sample_scene(rng, size_range) for _ in range(n)]


# ------------------------------------------------------------------ scenes and answers

def test_scene_geometry_and_boxes():
    counts = {1: 0, 2: 0, 3: 0}
    for sc in scenes():
        counts[len(sc.shapes)] += 1
        for s in sc.shapes:
            x0, y0, x1, y1 = s.bbox()
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            b = Q.box_of(s)
            assert all(isinstance(v, int) for v in b)
            assert 0 <= b[0] < b[2] <= 100 and 0 <= b[1] < b[3] <= 100
            assert abs(b[0] - 100 * x0) <= 0.5 and abs(b[3] - 100 * y1) <= 0.5
            assert Q.parse_box(Q.format_box(b)) == b
        for i, a in enumerate(sc.shapes):
            for b in sc.shapes[i + 1:]:
                ax0, ay0, ax1, ay1 = a.bbox()
                bx0, by0, bx1, by1 = b.bbox()
                assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, "shapes overlap"
                assert abs(a.cx - b.cx) >= S.MIN_DX
    assert min(counts.values()) > N_SCENES // 6, counts


def test_answers_match_scene():
    for sc in scenes(seed=11):
        sh = sc.shapes
        for q, a in Q.candidates(sc, "color"):
            kind = q[len("What color is the "):-1]
            match = [s for s in sh if s.kind == kind]
            assert len(match) == 1 and match[0].color == a
        for q, a in Q.candidates(sc, "shape"):
            color = q.split()[4]
            match = [s for s in sh if s.color == color]
            assert len(match) == 1 and match[0].kind == a
        (q, a), = Q.candidates(sc, "count")
        assert a == {1: "one", 2: "two", 3: "three"}[len(sh)]
        ex = Q.candidates(sc, "exists")
        assert len(ex) == 12
        for q, a in ex:
            c, k = q[len("Is there a "):-1].split()
            assert a == ("yes" if any(s.color == c and s.kind == k for s in sh) else "no")
        (q, a), = Q.candidates(sc, "describe")
        left_to_right = sorted(sh, key=lambda s: s.cx)
        words = a.replace(",", "").replace(" and ", " ").split()
        assert words == [w for s in left_to_right for w in ("a", s.color, s.kind)]
        for q, a in Q.candidates(sc, "refer"):
            c, k = q[len("[refer] where is the "):-1].split()
            match = [s for s in sh if s.color == c and s.kind == k]
            assert len(match) == 1 and Q.parse_box(a) == Q.box_of(match[0])


def test_ambiguous_questions_are_not_asked():
    two_circles = S.Scene((S.Shape("circle", "red", 0.2, 0.2, 0.1), S.Shape("circle", "red", 0.7, 0.7, 0.1)))
    assert Q.candidates(two_circles, "color") == []
    assert Q.candidates(two_circles, "shape") == []
    assert Q.candidates(two_circles, "refer") == []
    assert Q.candidates(two_circles, "describe") == [("Describe the image.", "a red circle and a red circle")]


def test_sampled_questions_cover_all_types_and_balance_yes_no():
    rng = np.random.default_rng(3)
    seen, yes = {}, 0
    for sc in scenes(seed=5, n=600):
        t, q, a = Q.sample_question(sc, rng)
        assert (q, a) in Q.candidates(sc, t)
        seen[t] = seen.get(t, 0) + 1
        yes += t == "exists" and a == "yes"
    assert set(seen) == set(Q.QTYPES)
    assert 0.3 < yes / seen["exists"] < 0.7


def test_prompt_template():
    before, after = Q.prompt_segments("Describe the image.")
    assert before == "<s>[INST] <Img>"
    assert after == "</Img> Describe the image. [/INST]"
    assert Q.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert Q.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert Q.parse_box("{<1><2><3>}") is None and Q.parse_box("red") is None


# ------------------------------------------------------------------ both painters draw the described scene

def nearest_palette(rgb, palette):
    names = list(palette)
    d = [np.abs(np.array(palette[n], float) - rgb).sum() for n in names]
    return names[int(np.argmin(d))]


@pytest.mark.parametrize("painter", ["A", "B"])
def test_painters_draw_the_scene(painter):
    palette = S.PALETTE_A if painter == "A" else S.PALETTE_B
    expected_fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
    rng = np.random.default_rng(21)
    for _ in range(60):
        scene, img = S.draw_sample(rng, painter, RENDER)
        a = np.asarray(img).astype(float)
        colored = (a.max(axis=2) - a.min(axis=2)) > 30          # saturated = part of a shape
        covered = np.zeros_like(colored)
        for s in scene.shapes:
            x0, y0, x1, y1 = (int(round(v * RENDER)) for v in s.bbox())
            inner = colored[y0:y1, x0:x1]
            assert abs(inner.mean() - expected_fill[s.kind]) < 0.12, (s, inner.mean())
            centre = a[int(s.cy * RENDER + s.r * RENDER * 0.3), int(s.cx * RENDER)]
            assert nearest_palette(centre, palette) == s.color
            covered[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True
        assert not (colored & ~covered).any(), "colour outside every shape's box"
        background = a[~covered]
        assert background.min() >= 230


def test_painters_differ_in_pixels():
    scene = S.sample_scene(np.random.default_rng(1))
    a = np.asarray(S.paint_a(scene, 64, np.random.default_rng(2))).astype(int)
    b = np.asarray(S.paint_b(scene, 64, np.random.default_rng(2))).astype(int)
    assert np.abs(a - b).mean() > 1.0


@pytest.mark.parametrize("painter", ["A", "B"])
def test_determinism_by_seed(painter):
    s1, i1 = S.draw_sample(np.random.default_rng(99), painter, 64)
    s2, i2 = S.draw_sample(np.random.default_rng(99), painter, 64)
    s3, i3 = S.draw_sample(np.random.default_rng(100), painter, 64)
    assert s1 == s2 and np.array_equal(np.asarray(i1), np.asarray(i2))
    assert s1 != s3


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="painter"):
        S.draw_sample(np.random.default_rng(0), "C", 64)
    with pytest.raises(ValueError, match="n_shapes"):
        S.sample_scene(np.random.default_rng(0), n_shapes=4)
    with pytest.raises(ValueError, match="question type"):
        Q.candidates(S.sample_scene(np.random.default_rng(0)), "colour")


# ------------------------------------------------------------------ tokenizer

@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    pytest.importorskip("sentencepiece")
    import tokenizer
    return tokenizer.train_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.model"))


def test_tokenizer_pieces(sp):
    for sym in ("{<", "><", ">}", "###"):
        assert len(sp.encode(sym)) == 1, sym
    coords = {v for sc in scenes(seed=17, n=2000) for s in sc.shapes for v in Q.box_of(s)}
    for v in coords:                            # every coordinate that occurs is one piece
        assert len(sp.encode(str(v))) == 1, v
    for v in range(101):                        # the others still round-trip
        assert sp.decode(sp.encode(str(v))) == str(v)
    ids = sp.encode("{<5><30><21><47>}###")
    assert [sp.id_to_piece(i) for i in ids] == ["{<", "5", "><", "30", "><", "21", "><", "47", ">}", "###"]
    assert sp.encode("red###", out_type=str) == ["red", "###"]
    assert sp.bos_id() == 1 and sp.eos_id() == 2 and sp.unk_id() == 0


def test_tokenizer_round_trip_and_determinism(sp, tmp_path):
    import tokenizer
    for s in ["<s>[INST] <Img>", "</Img> [refer] where is the green triangle? [/INST]",
              "a red circle, a green triangle and a blue square###", "Ünïcode ✓ and  two  spaces "]:
        assert sp.decode(sp.encode(s)) == s
    again = tokenizer.train_tokenizer(str(tmp_path / "t.model"))
    assert again.serialized_model_proto() == sp.serialized_model_proto()


# ------------------------------------------------------------------ export in the release formats

def test_export_round_trip(tmp_path, sp):
    torch = pytest.importorskip("torch")
    import export
    from model import DemoConfig, TinyGPTVDemo

    cfg = DemoConfig(vit_width=64, vit_heads=1, vit_mlp=128, vit_depth=2, qf_width=64, qf_heads=1, qf_ffn=128,
                     qf_layers=2, n_query=4, proj_inner=96, n_embd=64, n_head=1, n_ffn=128, n_layer=2,
                     vocab_size=sp.get_piece_size())
    m = TinyGPTVDemo(cfg)
    torch.save({"config": cfg.to_dict(), "model": m.state_dict(), "tokenizer_model": sp.serialized_model_proto()},
               tmp_path / "trained.pt")
    r = export.export(str(tmp_path / "trained.pt"), str(tmp_path / "ck"))
    assert r["max_abs_diff"] < 1e-6

    vit = torch.load(tmp_path / "ck" / "eva_vit_g.pth")
    assert vit["pos_embed"].shape == (1, 1 + (64 // 16) ** 2, 64) and vit["cls_token"].shape == (1, 1, 64)
    assert vit["patch_embed.proj.weight"].shape == (64, 3, 16, 16)
    assert {int(k.split(".")[1]) for k in vit if k.startswith("blocks.")} == {0, 1, 2}   # one extra block
    assert vit["blocks.0.attn.qkv.weight"].shape == (192, 64) and "blocks.0.attn.qkv.bias" not in vit

    blip = torch.load(tmp_path / "ck" / "blip2_pretrained_flant5xxl.pth")["model"]
    assert blip["query_tokens"].shape == (1, 4, 64)
    assert blip["Qformer.bert.embeddings.position_ids"].dtype == torch.long
    assert "Qformer.bert.encoder.layer.0.crossattention.self.key.weight" in blip
    assert "Qformer.bert.encoder.layer.1.crossattention.self.key.weight" not in blip
    assert "Qformer.bert.encoder.layer.1.output_query.LayerNorm.weight" in blip

    base = torch.load(tmp_path / "ck" / "phi2" / "pytorch_model.bin")
    assert base["model.layers.0.self_attn.query_key_value.weight"].shape == (192, 64)
    assert not any("q_layernorm" in k or "post_layernorm" in k for k in base)
    assert base["lm_head.bias"].shape == (cfg.vocab_size,)

    st = torch.load(tmp_path / "ck" / "TinyGPT-V_for_Stage4.pth", weights_only=False)
    p = "llama_model.base_model.model.model.layers.1."
    assert st["model"][p + "self_attn.query_key_value.lora_A.weight"].shape == (export.LORA_R, 64)
    assert st["model"][p + "self_attn.dense.lora_B.weight"].shape == (64, export.LORA_R)
    assert st["model"][p + "post_layernorm.weight"].shape == (64,)
    assert st["config"]["model"]["arch"] == "minigpt_v2" and st["config"]["model"]["image_size"] == 64
    # the LoRA delta is large enough that a converter which skips the merge gets other weights
    merged = export.load_release(str(tmp_path / "ck"), cfg)
    w = merged["llama_model.model.layers.1.self_attn.dense.weight"]
    assert (w - base["model.layers.1.self_attn.dense.weight"]).abs().max() > 1e-3
