"""Facts about the demo model's data generator, independent painter, tokenizer and checkpoint export
(tools/demo, tests/demo_painter.py)."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "demo"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import demo_painter as P  # noqa: E402
import questions as Q  # noqa: E402
import shapes as S  # noqa: E402

N_SCENES = 300
RENDER = 128


def scenes(seed=7, n=N_SCENES):
    rng = np.random.default_rng(seed)
    return [S.sample_scene(rng) for _ in range(n)]


# ------------------------------------------------------------------ scenes and answers

def test_scene_geometry_and_boxes():
    counts = {1: 0, 2: 0, 3: 0}
    sides, cells = [], set()
    for sc in scenes():
        counts[len(sc.shapes)] += 1
        for s in sc.shapes:
            x0, y0, x1, y1 = s.bbox()
            assert 0 < x0 < x1 < 1 and 0 < y0 < y1 < 1
            sides.append(max(x1 - x0, y1 - y0))
            cells.add((int(s.cx * 8), int(s.cy * 8)))
            b = Q.box_of(s)
            assert 0 <= b[0] < b[2] <= 99 and 0 <= b[1] < b[3] <= 99
            assert abs(b[0] - 100 * x0) <= 0.5 and abs(b[3] - 100 * y1) <= 0.5
            assert Q.parse_box(Q.format_box(b)) == b
        for i, a in enumerate(sc.shapes):
            for b in sc.shapes[i + 1:]:
                assert S.separated(a, b)
    assert min(counts.values()) > N_SCENES // 6, counts
    # sizes cover 5-25% of the side; placement is free (centres in nearly every cell of an 8 x 8 board)
    assert S.SIZE_RANGE[0] <= min(sides) < 0.06 and 0.24 < max(sides) <= S.SIZE_RANGE[1]
    assert len(cells) >= 60


def test_answers_match_scene():
    for sc in scenes(seed=11):
        sh = sc.shapes
        for f, a in Q.candidates(sc, "color"):
            match = [s for s in sh if s.kind == f["k"]]
            assert len(match) == 1 and match[0].color == a
        for f, a in Q.candidates(sc, "shape"):
            match = [s for s in sh if s.color == f["c"]]
            assert len(match) == 1 and match[0].kind == a
        (f, a), = Q.candidates(sc, "count")
        assert a == {1: "one", 2: "two", 3: "three"}[len(sh)]
        ex = Q.candidates(sc, "exists")
        assert len(ex) == 12
        for f, a in ex:
            assert a == ("yes" if any(s.color == f["c"] and s.kind == f["k"] for s in sh) else "no")
        (f, a), = Q.candidates(sc, "describe")
        left_to_right = sorted(sh, key=lambda s: s.cx)
        words = a.replace(",", "").replace(" and ", " ").split()
        assert words == [w for s in left_to_right for w in ("a", s.color, s.kind)]
        (f, g), = Q.candidates(sc, "grounding")
        text, boxes = Q.split_boxes(g)
        assert boxes == [Q.box_of(s) for s in left_to_right]
        assert text.replace("<p>", "").replace("</p> {}", "") == a
        for f, a in Q.candidates(sc, "refer"):
            match = [s for s in sh if s.color == f["c"] and s.kind == f["k"]]
            assert len(match) == 1 and Q.parse_box(a) == Q.box_of(match[0])
        for f, a in Q.candidates(sc, "detection"):
            match = [s for s in left_to_right if f["l"] in (s.kind, f"{s.color} {s.kind}")]
            assert a == f"<p>{f['l']}</p> " + "<delim>".join(Q.format_box(Q.box_of(s)) for s in match)
        for f, a in Q.candidates(sc, "identify"):
            s, = [s for s in sh if Q.format_box(Q.box_of(s)) == f["b"]]
            assert a == f"a {s.color} {s.kind}"


def test_ambiguous_questions_are_not_asked():
    two_circles = S.Scene((S.Shape("circle", "red", 0.1, 0.1, 0.3, 0.3), S.Shape("circle", "red", 0.6, 0.6, 0.8, 0.8)))
    assert Q.candidates(two_circles, "color") == []
    assert Q.candidates(two_circles, "shape") == []
    assert Q.candidates(two_circles, "refer") == []
    assert Q.candidates(two_circles, "describe") == [({}, "a red circle and a red circle")]
    assert Q.candidates(two_circles, "detection")[0] == (
        {"l": "circle"}, "<p>circle</p> {<10><10><30><30>}<delim>{<60><60><80><80>}")


def test_phrasings_and_tags():
    assert Q.phrase("color", {"k": "circle"}) == "What color is the circle?"
    forms = set(Q.all_phrasings("color", {"k": "circle"}))
    assert "What colour is the circle?" in forms and "[vqa] What color is the circle?" in forms
    for qtype in ("describe", "grounding", "detection", "identify", "refer"):
        tags = {f.split("]")[0] + "]" for f in Q.PHRASES[qtype] if f.startswith("[")}
        assert tags and tags <= set(Q.TAGS), qtype
    assert {"[caption]", "[grounding]", "[detection]", "[refer]", "[identify]", "[vqa]"} <= {
        f.split("]")[0] + "]" for forms in Q.PHRASES.values() for f in forms if f.startswith("[")}
    assert not set(Q.OTHER_TAGS) & set(Q.TAGS)
    (f, a), *_ = Q.candidates(scenes(n=1)[0], "refuse")
    assert Q.phrase("refuse", f).startswith(f["t"] + " ") and a == Q.REFUSAL


def test_scoring():
    assert Q.is_right("color", "red", "red") and not Q.is_right("color", "red ", "red")
    g = "<p>a red circle</p> {<10><10><30><30>} and <p>a blue square</p> {<50><50><70><70>}"
    assert Q.is_right("grounding", g.replace("<30><30>", "<31><29>"), g)
    assert not Q.is_right("grounding", g.replace("<30><30>", "<50><50>"), g)          # IoU under 0.5
    assert not Q.is_right("grounding", g.replace("blue", "green"), g)                 # the text is wrong
    two = "<p>circle</p> {<10><10><30><30>}<delim>{<60><60><80><80>}"
    assert not Q.is_right("detection", "<p>circle</p> {<10><10><30><30>}", two)          # a box missing
    assert Q.is_right("refer", "{<10><10><30><30>}", "{<11><10><30><31>}")


def test_sampled_questions_cover_all_types_and_balance_yes_no():
    rng = np.random.default_rng(3)
    seen, yes, phrasings = {}, 0, set()
    for sc in scenes(seed=5, n=1000):
        t, q, a = Q.sample_question(sc, rng)
        assert any(q in Q.all_phrasings(t, f) and a == b for f, b in Q.candidates(sc, t))
        seen[t] = seen.get(t, 0) + 1
        yes += t == "exists" and a == "yes"
        phrasings.add(q.split()[0])
    assert set(seen) == set(Q.QTYPES)
    assert 0.3 < yes / seen["exists"] < 0.7
    assert {"What", "Which", "[vqa]", "[caption]", "[grounding]", "[detection]", "[refer]", "[identify]"} <= phrasings


def test_chats_and_training_rows(sp):
    import data
    enc = data.Encoder(sp)
    rng = np.random.default_rng(4)
    for sc in scenes(seed=9, n=30):
        turns = Q.sample_chat(sc, rng, 3)
        assert len({q for _, q, _ in turns}) == 3
        ids, tgt = data.chat_rows(enc, turns)
        assert len(ids) == len(tgt)
        # the ids are what the engine sends: first turn after the image, answers without "###", later turns
        text = sp.decode(ids)
        assert text == (Q.prompt_segments(turns[0][1])[1] + turns[0][2] + Q.turn_text(turns[1][1]) + turns[1][2]
                        + Q.turn_text(turns[2][1]) + turns[2][2])
        # the loss is on every answer and its stop string
        assert sp.decode([t for t in tgt if t >= 0]) == "".join(a + Q.END_SYM for _, _, a in turns)
        # position p predicts token p + 1
        for p, t in enumerate(tgt[:-1]):
            if t >= 0 and t != sp.piece_to_id(Q.END_SYM):
                assert ids[p + 1] == t


def test_query_targets_hold_every_shape_once():
    import data
    for sc in scenes(seed=13, n=200):
        cls, box = data.query_targets(sc)
        want = sorted(1 + 3 * S.COLORS.index(s.color) + S.KINDS.index(s.kind) for s in sc.shapes)
        assert sorted(cls[cls > 0].tolist()) == want
        assert sorted(tuple(b) for b in box[cls > 0].tolist()) == sorted(Q.box_of(s) for s in sc.shapes)
        assert (box[cls == 0] == -100).all()
    # a lone shape goes to the query cell that holds its centre
    one = S.Scene((S.Shape("square", "blue", 0.55, 0.30, 0.65, 0.40),))
    cls, _ = data.query_targets(one)
    assert cls.nonzero().flatten().tolist() == [1 * data.GRID + 2]


def test_patch_and_query_attention_targets():
    pytest.importorskip("torch")
    import data
    # a blue square over exactly the four patches 7, 8, 13, 14 of a 96-pixel input (6 x 6 patches of 16)
    sq = S.Shape("square", "blue", 1 / 6, 1 / 6, 3 / 6, 3 / 6)
    tri = S.Shape("triangle", "red", 0.70, 0.70, 0.90, 0.90, apex=0.5)
    sc = S.Scene((sq, tri))
    t = data.patch_targets(sc, 96, 16).numpy()
    assert t.shape == (36, 13) and np.allclose(t.sum(1), 1) and (t >= 0).all()
    blue_square = 1 + 3 * S.COLORS.index("blue") + S.KINDS.index("square")
    assert np.allclose(t[[7, 8, 13, 14], blue_square], 1) and t[0, 0] == 1
    red_triangle = 1 + 3 * S.COLORS.index("red") + S.KINDS.index("triangle")
    assert t[:, red_triangle].sum() > 0 and t[[7, 8, 13, 14], red_triangle].sum() == 0
    # the query holding the square looks at its four patches, a quarter each; empty queries hold 0
    a = data.query_attention_targets(sc, 96, 16).numpy()
    cls, _ = data.query_targets(sc)
    q = int((cls == blue_square).nonzero()[0, 0])
    assert np.allclose(a[q, [7, 8, 13, 14]], 0.25) and np.isclose(a[q].sum(), 1)
    assert np.allclose(a.sum(1), (cls > 0).numpy().astype(float))
    # the triangle's area: half its box
    cov = data.coverage(sc, 96, 16, sub=32)
    assert abs(cov[1].sum() * (1 / 36) - 0.5 * 0.2 * 0.2) < 1e-3


def test_cell_attention_target():
    pytest.importorskip("torch")
    pytest.importorskip("sentencepiece")
    from train import cell_attention_target
    t = cell_attention_target(96, 16)                     # 6 x 6 patches, 4 x 4 cells of 1.5 x 1.5 patches
    assert t.shape == (16, 36) and np.allclose(t.sum(1).numpy(), 1)
    # cell 0 holds all of patch 0, half of patches 1 and 6, a quarter of patch 7: weights 4:2:2:1
    assert np.allclose(t[0, [0, 1, 6, 7]].numpy(), np.array([4, 2, 2, 1]) / 9) and t[0, [2, 12, 14]].sum() == 0
    assert np.allclose(cell_attention_target(64, 16).numpy(), np.eye(16))   # one patch per cell


# ------------------------------------------------------------------ both painters draw the described scene

ALL_SHADES = [(name, rgb) for pal in (S.SHADES, P.SHADES) for name, shades in pal.items() for rgb in shades]


def colour_name(rgb):
    return min(ALL_SHADES, key=lambda nr: np.abs(np.array(nr[1], float) - rgb).sum())[0]


def inner_point(s: S.Shape, size: int):
    """A pixel well inside the shape (a triangle's centroid, the centre otherwise)."""
    if s.kind == "triangle":
        x = (s.x0 + s.apex * (s.x1 - s.x0) + s.x0 + s.x1) / 3
        y = (s.y0 + 2 * s.y1) / 3
    else:
        x, y = s.cx, s.cy
    return int(y * size), int(x * size)


@pytest.mark.parametrize("painter", ["gen", "indep"])
def test_painters_draw_the_scene(painter):
    expected_fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
    rng = np.random.default_rng(21)
    right = n = 0
    for _ in range(60):
        if painter == "gen":
            scene = S.sample_scene(rng)
            img = S.paint(scene, RENDER, rng)
        else:
            scene = P.sample_scene(rng)
            img = P.paint(scene, RENDER, rng)
        a = np.asarray(img).astype(float)
        colored = (a.max(axis=2) - a.min(axis=2)) > 60          # saturated = part of a shape
        covered = np.zeros_like(colored)
        for s in scene.shapes:
            covered[max(0, int(s.y0 * RENDER) - 2):int(s.y1 * RENDER) + 3,
                    max(0, int(s.x0 * RENDER) - 2):int(s.x1 * RENDER) + 3] = True
        bg = np.median(a[~covered], axis=0)
        painted = np.abs(a - bg).sum(axis=2) > 90                # fill or outline
        for s in scene.shapes:
            x0, y0, x1, y1 = (int(round(v * RENDER)) for v in s.bbox())
            inner = painted[y0:y1, x0:x1]
            if min(x1 - x0, y1 - y0) >= 12:                     # large enough to measure its fill
                assert abs(inner.mean() - expected_fill[s.kind]) < 0.2, (s, inner.mean())
            right += colour_name(a[inner_point(s, RENDER)]) == s.color
            n += 1
        assert colored[~covered].mean() < 0.002, "colour outside every shape's box"
        assert a[~covered].min() >= 150                         # a light background (JPEG may ring)
    assert right >= 0.97 * n, (right, n)


def test_painters_differ():
    """The independent painter is another hand: other sizes, placement and pixels."""
    rng = np.random.default_rng(1)
    gen = [max(s.x1 - s.x0, s.y1 - s.y0) for _ in range(300) for s in S.sample_scene(rng).shapes]
    ind = [max(s.x1 - s.x0, s.y1 - s.y0) for _ in range(300) for s in P.sample_scene(rng).shapes]
    assert min(ind) >= 0.07 and max(ind) <= 0.22 and min(gen) < 0.06
    scene = S.sample_scene(np.random.default_rng(1))
    a = np.asarray(S.paint(scene, 96, np.random.default_rng(2))).astype(int)
    b = np.asarray(P.paint(scene, 96, np.random.default_rng(2))).astype(int)
    assert np.abs(a - b).mean() > 1.0


def test_determinism_by_seed():
    for draw in (S.draw_sample, P.draw):
        s1, i1 = draw(np.random.default_rng(99))
        s2, i2 = draw(np.random.default_rng(99))
        s3, i3 = draw(np.random.default_rng(100))
        assert s1 == s2 and np.array_equal(np.asarray(i1), np.asarray(i2))
        assert s1 != s3


def test_bad_arguments_raise():
    import chat_eval
    with pytest.raises(ValueError, match="painter"):
        chat_eval.painter("C")
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
    for sym in ("{<", "><", ">}", "###", "<p>", "</p>", "<delim>"):
        assert len(sp.encode(sym)) == 1, sym
    for v in range(100):                        # every coordinate that occurs (0..99) is one piece
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
              "<s>[INST] How many shapes? [/INST]",
              "<p>a red circle</p> {<8><22><27><41>}, <p>a blue square</p> {<70><12><88><30>}###", Q.REFUSAL,
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
    assert vit["pos_embed"].shape == (1, 1 + (96 // 16) ** 2, 64) and vit["cls_token"].shape == (1, 1, 64)
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
    assert st["config"]["model"]["arch"] == "minigpt_v2" and st["config"]["model"]["image_size"] == 96
    # the LoRA delta is large enough that a converter which skips the merge gets other weights
    merged = export.load_release(str(tmp_path / "ck"), cfg)
    w = merged["llama_model.model.layers.1.self_attn.dense.weight"]
    assert (w - base["model.layers.1.self_attn.dense.weight"]).abs().max() > 1e-3
