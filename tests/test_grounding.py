"""Grounding boxes: parsing {<x1><y1><x2><y2>} on the 0-100 grid, mapping to pixels, drawing."""
import numpy as np
import pytest
from PIL import Image

from tinygptv_native.grounding import Box, draw_boxes, parse_boxes, strip_boxes


def test_single_refer_box_maps_to_pixels():
    (b,) = parse_boxes("{<10><20><50><90>}", (640, 480))
    assert b.label is None and b.grid == (10, 20, 50, 90)
    assert b.xyxy == pytest.approx((64.0, 96.0, 320.0, 432.0))
    assert b.width == pytest.approx(256.0) and b.height == pytest.approx(336.0)


def test_grounding_answer_with_labels_and_delim():
    t = ("<p>a dog</p> {<10><20><50><90>}<delim>{<55><20><95><90>} is next to <p>a red ball</p>{<40><70><60><95>}"
         " and something {<0><0><100><100>}")
    boxes = parse_boxes(t, (200, 100))
    assert [b.label for b in boxes] == ["a dog", "a dog", "a red ball", None]
    assert boxes[1].xyxy == pytest.approx((110.0, 20.0, 190.0, 90.0))
    assert boxes[3].xyxy == pytest.approx((0.0, 0.0, 200.0, 100.0))
    assert t[boxes[2].span[0]:boxes[2].span[1]] == "{<40><70><60><95>}"
    assert strip_boxes(t) == "a dog is next to a red ball and something"


def test_grid_without_image_and_other_image_kinds(tmp_path):
    assert parse_boxes("{<1><2><3><4>}")[0].xyxy == (1, 2, 3, 4)
    arr = np.zeros((30, 60, 3), np.uint8)  # H=30, W=60
    assert parse_boxes("{<50><50><100><100>}", arr)[0].xyxy == pytest.approx((30, 15, 60, 30))
    im = Image.new("RGB", (60, 30))
    assert parse_boxes("{<50><50><100><100>}", im)[0].xyxy == pytest.approx((30, 15, 60, 30))
    p = tmp_path / "a.png"
    im.save(p)
    assert parse_boxes("{<50><50><100><100>}", str(p))[0].xyxy == pytest.approx((30, 15, 60, 30))


@pytest.mark.parametrize("text", [
    "{<1><2><3>}", "{<1><2><3><4><5>}", "{<a><2><3><4>}", "<1><2><3><4>", "{<1><2><3><4>", "{1,2,3,4}",
    "{<1.5><2><3><4>}", "", "no boxes at all", "<p>unclosed {<1><2>",
])
def test_malformed_box_text_is_not_a_box(text):
    assert parse_boxes(text, (100, 100)) == []


def test_clamped_and_ordered():
    (b,) = parse_boxes("{< 120 ><-5><30><40>}", (100, 200))
    assert b.grid == (30, 0, 100, 40) and b.xyxy == pytest.approx((30, 0, 100, 80))


def test_bad_arguments():
    with pytest.raises(TypeError):
        parse_boxes(None)
    with pytest.raises(ValueError, match="positive"):
        parse_boxes("{<1><2><3><4>}", (0, 10))


def test_draw_changes_pixels_on_the_box(tmp_path):
    im = Image.new("RGB", (200, 100), (255, 255, 255))
    src = tmp_path / "white.png"
    im.save(src)
    out = tmp_path / "boxes.png"
    got = draw_boxes(str(src), "<p>thing</p> {<25><20><75><80>}", out=out)
    a = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert np.array_equal(a, np.asarray(got))
    changed = np.any(a != 255, axis=2)
    ys, xs = np.nonzero(changed)
    # drawing stays inside the box (x 50..150, y 20..80) and covers its outline
    assert xs.min() >= 50 and xs.max() <= 149 and ys.min() >= 20 and ys.max() <= 79
    assert changed[20, 50:150].all() and changed[79, 50:150].all() and changed[20:80, 50].all()
    assert changed[20:80, 149].all()
    assert not changed[50, 100]  # the inside (away from the label) is untouched
    assert not any(p.name.startswith("boxes.png.tmp") for p in tmp_path.iterdir())


def test_draw_list_of_boxes_and_bad_output(tmp_path):
    im = Image.new("RGB", (50, 50), (0, 0, 0))
    boxes = [Box(None, (0, 0, 50, 50), (0.0, 0.0, 25.0, 25.0), (0, 0))]
    got = draw_boxes(im, boxes)
    assert np.asarray(got)[0, 0].tolist() != [0, 0, 0] and np.asarray(im).max() == 0  # a copy is drawn on
    with pytest.raises(ValueError, match="extension"):
        draw_boxes(im, boxes, out=tmp_path / "noext")
