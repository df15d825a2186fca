"""`tinygptv eval` and `tinygptv batch` on small data sets written here in the exact layouts of
TinyGPT-V's evaluation, answered by the embedded demo model.

The demo model knows pictures of coloured shapes and the questions of tools/demo/questions.py, so the
data sets ask those questions about the demo picture (a red circle, a green triangle, a blue square)
inside each task's wording. It is a tiny model: the expected scores below are worked out by hand from
its actual answers (greedy, so they do not change), quirks of the reference rules included.
"""
import json
import math
import os
import shutil

import numpy as np
import pytest

from tinygptv_native import Model
from tinygptv_native import evaluation as E
from tinygptv_native import metrics as M
from tinygptv_native.cli import main
from tinygptv_native.demo import demo_image_path

PIC = str(demo_image_path())  # red circle, green triangle, blue square (left to right)


@pytest.fixture(scope="module")
def demo():
    return Model(n_threads=2)


def _json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _pic(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copy(PIC, path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The evaluation data folder: gqa/, hateful_meme/, iconvqa/, vizwiz/, vsr/ as EVAL_README.md lays them out."""
    d = tmp_path_factory.mktemp("evaldata")
    # GQA: the evaluation's list of {image, question, answer}
    _pic(d / "gqa" / "gqa_images" / "n1.jpg")
    _json(d / "gqa" / "testdev_balanced_questions.json", [
        {"image": "n1.jpg", "question": "How many shapes are there?", "answer": "three"},
        {"image": "n1.jpg", "question": "Is there a green triangle?", "answer": "yes"},
        {"image": "n1.jpg", "question": "What color is the square?", "answer": "blue"},
        {"image": "n1.jpg", "question": "Is there a blue circle?", "answer": "no"},
        {"image": "gone.jpg", "question": "Is there a blue circle?", "answer": "no"},
    ])
    # VSR: a local copy of cambridgeltl/vsr_zeroshot's test split; pictures in vsr_images/{train,val}2017/
    _pic(d / "vsr" / "vsr_images" / "val2017" / "000000000001.jpg")
    _jsonl(d / "vsr" / "test.jsonl", [
        {"image": "000000000001.jpg", "caption": "Is there a green triangle?", "label": 1, "relation": "x"},
        {"image": "000000000001.jpg", "caption": "Is there a blue circle?", "label": 0, "relation": "x"},
        {"image": "000000000001.jpg", "caption": "Is there a blue circle?", "label": 1, "relation": "x"},
        {"image": "000000000001.jpg", "caption": "How many shapes are there?", "label": 0, "relation": "x"},
    ])
    # VizWiz: val.json, ten answers per question
    _pic(d / "vizwiz" / "vizwiz_images" / "VizWiz_val_00000001.jpg")
    _pic(d / "vizwiz" / "vizwiz_images" / "VizWiz_val_00000002.jpg")
    ans = lambda xs: [{"answer": a, "answer_confidence": "yes"} for a in xs]  # noqa: E731
    _json(d / "vizwiz" / "val.json", [
        {"image": "VizWiz_val_00000001.jpg", "question": "What color is the circle?",
         "answers": ans(["red"] * 7 + ["no"] + ["not sure"] * 2), "answerable": 1},
        {"image": "VizWiz_val_00000002.jpg", "question": "Is there a green triangle?",
         "answers": ans(["No."] * 2 + ["no"] * 2 + ["unanswerable"] * 6), "answerable": 1},
    ])
    # IconQA: choose_text_val.json, iconvqa_images/<image_id>/image.png
    _pic(d / "iconvqa" / "iconvqa_images" / "101" / "image.png")
    _pic(d / "iconvqa" / "iconvqa_images" / "102" / "image.png")
    _json(d / "iconvqa" / "choose_text_val.json", [
        {"image_id": "101", "question": "What color is the circle?", "choices": ["blue", "red", "green"], "answer": 1},
        {"image_id": "102", "question": "Is there a green triangle?", "choices": ["no", "yes"], "answer": 1},
    ])
    # Hateful Memes: dev.jsonl, hm_images/img/<id>.png
    texts = ["Is there a green triangle?", "Is there a blue circle?", "What color is the circle?",
             "How many shapes are there?"]
    _pic(d / "hateful_meme" / "hm_images" / "img" / "01234.png")
    _jsonl(d / "hateful_meme" / "dev.jsonl",
           [{"id": 1000 + i, "img": "img/01234.png", "label": lab, "text": t}
            for i, (t, lab) in enumerate(zip(texts, [1, 0, 1, 0]))])
    return d


def _eval(data, out, task, *extra):
    assert main(["eval", "--task", task, "--data", str(data), "-o", str(out), "-t", "2", "--progress", "off",
                 *extra]) == 0
    with open(os.path.join(out, f"{task}.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    with open(os.path.join(out, "summary.json")) as f:
        summary = {s["task"]: s for s in json.load(f)}
    return recs, summary[task]


# ---- the scores' rules, by hand ------------------------------------------------------------------

def test_normalisation_corner_cases():
    n = M.normalize_answer
    assert n("Two dogs.") == "2 dogs"
    assert n("the black-and-white cat") == "black and white cat"   # a dash inside a word becomes a space
    assert n("yes , it is") == "yes it is"                          # a mark next to a space goes
    assert n("1,000") == "1000" and n("3.5") == "3.5"              # thousands comma; a decimal point stays
    assert n("Dont know") == "don't know" and n("isnt") == "isn't"  # contractions get their apostrophe
    assert n("An apple") == "apple" and n("none") == "0" and n("Ten") == "10"
    assert n("  red\n") == "red"


def test_vqa_accuracy_by_hand():
    gts = ["red"] * 7 + ["no"] + ["not sure"] * 2
    # leave-one-out: 9 subsets keep the single "no" (1/3 each), one drops it (0): 9/10 * 1/3
    assert M.vqa_accuracy("no", gts) == pytest.approx(0.3)
    assert M.vqa_accuracy("Red.", gts) == 1.0                       # 6 or 7 matches everywhere
    assert M.vqa_accuracy("no", ["No."] * 2 + ["no"] * 2 + ["x"] * 6) == pytest.approx((6 * 1 + 4 * 1) / 10)
    assert M.vqa_accuracy("two", ["2", "2", "3"] + ["x"] * 7) == pytest.approx((8 * (2 / 3) + 2 * (1 / 3)) / 10)


def test_reference_rules_by_hand():
    # VizWiz: equal, contains or contained, case-insensitive; min(count / 3, 1)
    assert M.paper_vizwiz("no", ["red"] * 7 + ["no"] + ["not sure"] * 2) == 1.0  # "no" and twice in "not sure"
    assert M.paper_vizwiz("a red car", ["red", "blue", "Car"]) == pytest.approx(2 / 3)
    assert M.paper_vizwiz("", ["anything"]) == pytest.approx(1 / 3)  # the empty answer is in every answer
    assert M.paper_vizwiz("x", ["a_b", "x_y"]) == pytest.approx(1 / 3)  # answers joined and split on "_"
    # GQA: the label as a substring of the whole lower-cased output
    assert M.paper_gqa("No### yes", "yes") == 1.0 and M.paper_gqa("Yes", "yes") == 1.0
    assert M.paper_gqa("no", "No") == 0.0  # the label is not lower-cased
    # VSR: "true"/"false" in the output, plus "yes"/"no": an output with both words counts twice
    assert M.paper_vsr("yes", "true") == 1 and M.paper_vsr("true, yes", "true") == 2
    assert M.paper_vsr("nothing", "false") == 1 and M.paper_vsr("yes", "false") == 0
    # Hateful Memes: "yes" first, then "no", else no prediction
    assert M.paper_hm_prediction("Yes and no") == 1 and M.paper_hm_prediction("nope") == 0
    assert M.paper_hm_prediction("maybe") is None
    assert M.reference_clean("<s>[INST] q [/INST] red</s>junk") == "red"
    assert M.reference_short_answer("Assistant: red### more") == "red"


def test_roc_auc_by_hand():
    # pairs (positive, negative): (0.9, 0.1) (0.9, 0.4) (0.4, 0.1) (0.4, 0.4)=tie
    assert M.roc_auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.4]) == pytest.approx(3.5 / 4)
    assert M.roc_auc([1, 1], [0.2, 0.3]) is None


def test_gqa_official_format_and_limit(tmp_path):
    _json(tmp_path / "gqa" / "testdev_balanced_questions.json",
          {"201": {"imageId": "n5", "question": "q1", "answer": "a"}, "202": {"imageId": "n6", "question": "q2",
                                                                            "answer": "b"}})
    items = E.load_items("gqa", str(tmp_path))
    assert [(i["id"], os.path.basename(i["image"]), i["label"]) for i in items] == [("201", "n5.jpg", "a"),
                                                                                  ("202", "n6.jpg", "b")]
    assert E.select(items, 1, None) == items[:1]
    assert E.select(items, 1, 3) == E.select(items, 1, 3) and len(E.select(items, 1, 3)) == 1
    with pytest.raises(E.DataError, match="data folder not found"):
        E.load_items("gqa", str(tmp_path / "nowhere"))
    with pytest.raises(E.DataError, match="no val.json"):
        E.load_items("vizwiz", str(tmp_path))


# ---- the tasks, end to end ------------------------------------------------------------------------

def test_gqa(data, tmp_path):
    recs, s = _eval(data, tmp_path, "gqa")
    assert [r.get("answer") for r in recs] == ["three", "no", "red", "no", None]
    assert recs[0]["prompt"] == ("<s>[INST] <Img><ImageHere></Img> [vqa] Based on the image, respond to this "
                                 "question with a short answer: How many shapes are there? [/INST]")
    assert "error" in recs[4] and "gone.jpg" in recs[4]["error"]
    # "no" for the green triangle is wrong, but the output goes on past "###" and says "yes" later:
    # the reference's substring rule counts it, exact match does not
    assert "yes" in recs[1]["raw"] and "blue" not in recs[2]["raw"]
    assert [r.get("paper") for r in recs[:4]] == [1.0, 1.0, 0.0, 1.0]
    assert [r.get("metric") for r in recs[:4]] == [1.0, 0.0, 0.0, 1.0]
    assert s["items"] == 5 and s["errors"] == 1
    assert s["paper"] == pytest.approx(300 / 5) and s["metric"] == pytest.approx(200 / 5)


def test_vsr(data, tmp_path):
    recs, s = _eval(data, tmp_path, "vsr")
    assert [r["answer"] for r in recs] == ["yes", "no", "no", "three"]
    assert [r["label"] for r in recs] == ["true", "false", "true", "false"]
    # 0: "yes" for true; 1: "no" for false; 2: "no" for true, but "yes" comes later in the output;
    # 3: "three" for false, with a "no" later ("...circleno###")
    assert "yes" in recs[2]["raw"] and "no" in recs[3]["raw"]
    assert [r["paper"] for r in recs] == [1.0, 1.0, 1.0, 1.0]
    assert [r["metric"] for r in recs] == [1.0, 1.0, 0.0, 0.0]
    assert s["paper"] == pytest.approx(100.0) and s["metric"] == pytest.approx(50.0)


def test_vizwiz(data, tmp_path):
    recs, s = _eval(data, tmp_path, "vizwiz")
    assert [r["answer"] for r in recs] == ["no", "no"]
    assert recs[0]["prompt"].endswith("[vqa] The question is 'What color is the circle?' Based on the image, answer "
                                      "the question with a single word or phrase. and reply 'unanswerable' when the "
                                      "provided information is insufficient [/INST]")
    # 0: "no" equals one answer and is in both "not sure": 3 -> 1.0; VQA accuracy 0.3 (see above)
    # 1: "no" is each of the four no's, and in none of "unanswerable": 1.0; normalised, four "no" -> 1.0
    assert [r["paper"] for r in recs] == [1.0, 1.0]
    assert [r["metric"] for r in recs] == pytest.approx([0.3, 1.0])
    assert s["paper"] == pytest.approx(100.0) and s["metric"] == pytest.approx(65.0)


def _log_softmax(x):
    x = x.astype(np.float64)
    return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))


def test_iconvqa_ranking_against_logits(data, tmp_path, demo):
    recs, s = _eval(data, tmp_path, "iconvqa")
    bos = demo.metadata["tokenizer.ggml.bos_token_id"]
    for r, q in zip(recs, ["What color is the circle?", "Is there a green triangle?"]):
        text = E.SHORT_ANSWER.format(q)
        assert r["prompt"] == f"###Human: <Img><ImageHere></Img> {text} ###Assistant: "
        # the reference ranking, from full logits: BOS, "###Human: <Img>", image, "</Img> ... ###Assistant: ",
        # then the candidate and "\n"; the mean log-probability of those tokens
        pre = [bos] + demo.tokenize("###Human: <Img>")
        post = demo.tokenize(f"</Img> {text} ###Assistant: ")
        for c, got in zip(r["choices"], r["scores"]):
            cand = demo.tokenize(c + "\n")
            lp = _log_softmax(demo.logits(pre + post + cand, image=r["image"], image_at=len(pre)))
            start = len(pre) + demo.n_image_tokens + len(post) - 1  # the row that predicts the first candidate token
            want = np.mean([lp[start + j, t] for j, t in enumerate(cand)])
            assert got == pytest.approx(want, abs=2e-3)
        assert r["answer_index"] == int(np.argmax(r["scores"]))
        # the chat ranking: the candidate as the answer of the chat template, total log-probability
        ids, at, _ = E._chat_ids(demo, text, r["image"])
        for c, got in zip(r["choices"], r["chat_scores"]):
            cand = demo.tokenize(c)
            lp = _log_softmax(demo.logits(ids + cand, image=r["image"], image_at=at))
            start = len(ids) + demo.n_image_tokens - 1
            assert got == pytest.approx(sum(lp[start + j, t] for j, t in enumerate(cand)), abs=2e-3)
    want_paper = [float(r["answer_index"] == r["label"]) for r in recs]
    assert [r["paper"] for r in recs] == want_paper
    assert s["paper"] == pytest.approx(100 * sum(want_paper) / 2)
    # the reference ranking gets both right; as the chat answer, "no" is likelier for the green triangle
    # (what the model also generates for this wording)
    assert [r["answer"] for r in recs] == ["red", "yes"] and [r["chat_answer_index"] for r in recs] == [1, 0]
    assert [r["metric"] for r in recs] == [1.0, 0.0]
    assert s["paper"] == 100.0 and s["metric"] == 50.0


def test_hateful_memes(data, tmp_path, demo):
    recs, s = _eval(data, tmp_path, "hm")
    assert recs[0]["prompt"].endswith("This is an image writting 'Is there a green triangle?'. Is this image "
                                      "hateful? Answer yes or no. Answer: [/INST]")
    # the demo model describes the picture instead: no "yes" and no "no", so no prediction and no point,
    # except the last answer, "a red circle73><no", which holds a "no": prediction 0, label 0, right
    assert [r["answer"].endswith("no") for r in recs] == [False, False, False, True]
    assert [r["prediction"] for r in recs] == [None, None, None, 0]
    assert [r["paper"] for r in recs] == [0.0, 0.0, 0.0, 1.0]
    # p(yes) from the first answer token: by hand from the full logits
    yes, no = demo.tokenize("yes"), demo.tokenize("no")
    assert len(yes) == len(no) == 1
    ps = []
    for r in recs:
        ids, at, _ = E._chat_ids(demo, r["prompt"].split("</Img> ")[1][: -len(" [/INST]")], r["image"])
        p = np.exp(_log_softmax(demo.logits(ids, image=r["image"], image_at=at))[-1])
        py = p[E._first_token_ids(demo, E.YES_SPELLINGS)].sum()
        pn = p[[i for i in E._first_token_ids(demo, E.NO_SPELLINGS) if i not in E._first_token_ids(demo, E.YES_SPELLINGS)]].sum()
        ps.append(py / (py + pn))
        assert r["metric"] == pytest.approx(ps[-1], abs=2e-3)
    labels = [r["label"] for r in recs]
    pairs = [(a, b) for a, la in zip(ps, labels) if la == 1 for b, lb in zip(ps, labels) if lb == 0]
    auc = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert s["metric"] == pytest.approx(100 * auc, abs=1e-6) and s["paper"] == 25.0
    assert not math.isnan(s["metric"])


def test_eval_resumes_and_limits(data, tmp_path):
    recs, _ = _eval(data, tmp_path, "gqa", "--limit", "2")
    assert [r["id"] for r in recs] == ["0", "1"]
    with open(tmp_path / "gqa.jsonl", "a") as f:
        f.write('{"id": "2", "torn')  # an interrupted write
    recs, s = _eval(data, tmp_path, "gqa")
    assert [r["id"] for r in recs] == ["0", "1", "2", "3", "4"] and s["items"] == 5
    assert s["paper"] == pytest.approx(60.0)


# ---- batch ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def items_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    _pic(d / "pics" / "a.png")
    rows = [{"image": "pics/a.png", "question": "How many shapes are there?", "tag": 1},
            {"image": "pics/a.png", "question": "Is there a green triangle?", "tag": 2},
            {"image": "pics/missing.png", "question": "Describe the image.", "tag": 3},
            {"image": "pics/a.png", "question": "What color is the circle?", "tag": 4},
            {"image": "pics/a.png", "question": "Describe the image.", "tag": 5}]
    with open(d / "pics" / "broken.png", "wb") as f:
        f.write(b"not a picture")
    rows.append({"image": "pics/broken.png", "question": "What color is the circle?", "tag": 6})
    _jsonl(d / "items.jsonl", rows)
    return d / "items.jsonl"


EXPECTED = ["three", "yes", None, "red", "a red circle, a green triangle and a blue square", None]


def _batch(*args):
    assert main(["batch", "-t", "2", "--progress", "off", *map(str, args)]) == 0


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_batch_jsonl_in_order_with_errors(items_file, tmp_path):
    out = tmp_path / "out.jsonl"
    _batch("--input", items_file, "--output", out)
    recs = _read(out)
    assert [r["tag"] for r in recs] == [1, 2, 3, 4, 5, 6]          # input order, other fields kept
    assert [r.get("answer") for r in recs] == EXPECTED
    assert "missing.png" in recs[2]["error"] and "error" in recs[5] and "answer" not in recs[5]


def test_batch_resumes(items_file, tmp_path):
    out = tmp_path / "out.jsonl"
    _batch("--input", items_file, "--output", out)
    whole = out.read_text()
    lines = whole.splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:10])  # two items done, a torn third line
    _batch("--input", items_file, "--output", out)
    assert out.read_text() == whole
    out.write_text(lines[1])  # not this input's first item
    assert main(["batch", "-i", str(items_file), "-o", str(out), "--progress", "off"]) == 1
    assert out.read_text() == lines[1]  # left alone


def test_batch_csv_and_folder(items_file, tmp_path):
    import csv
    src = os.path.dirname(items_file)
    with open(os.path.join(src, "items.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "question"])
        w.writeheader()
        w.writerow({"image": "pics/a.png", "question": "How many shapes are there?"})
    _batch("--input", os.path.join(src, "items.csv"), "--output", tmp_path / "csv.jsonl")
    assert [r["answer"] for r in _read(tmp_path / "csv.jsonl")] == ["three"]
    _batch("--input", os.path.join(src, "pics"), "--question", "How many shapes are there?", "--output",
           tmp_path / "dir.jsonl")
    recs = _read(tmp_path / "dir.jsonl")
    assert [r["image"] for r in recs] == ["a.png", "broken.png"]
    assert recs[0]["answer"] == "three" and "error" in recs[1]


# ---- Ray --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    # Ray's workers put the driver's working folder first on their import path: started from a checkout's
    # root they would import its uncompiled source folder instead of the installed package. They start
    # elsewhere and are told where the package this process imported lives.
    import tinygptv_native
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(tinygptv_native.__file__)))
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray_cwd"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": pkg_parent}})
        yield ray
        ray.shutdown()
    finally:
        os.chdir(here)


def test_ray_batch_matches_single_process(ray_local, items_file, tmp_path):
    _batch("--input", items_file, "--output", tmp_path / "one.jsonl")
    _batch("--input", items_file, "--output", tmp_path / "ray.jsonl", "--ray", "--ray-actors", "2",
           "--ray-batch-size", "2")
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()


def _answerer_pids():
    """The Ray actor processes that hold the job's model (Ray writes the actor class into each worker's
    process title, which /proc shows as its command line)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if cmd.startswith(b"ray::") and b"Answerer" in cmd:
                pids.append(int(d))
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds Ray's worker processes through /proc")
def test_ray_worker_killed_mid_run(ray_local, items_file, tmp_path):
    import signal
    import threading
    import time
    rows = _read(items_file)
    many = tmp_path / "many.jsonl"
    big = [dict(r, tag=100 * k + r["tag"], image=os.path.join(os.path.dirname(items_file), r["image"]))
           for k in range(8) for r in rows]  # 48 items in blocks of 2: most of the run is left after the kill
    with open(many, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in big)
    _batch("--input", many, "--output", tmp_path / "one.jsonl")
    out = tmp_path / "ray.jsonl"
    errors = []

    def job():
        try:
            _batch("--input", many, "--output", out, "--ray", "--ray-actors", "2", "--ray-batch-size", "2")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=job)
    t.start()
    killed, done_at_kill = None, None
    deadline = time.time() + 300
    while t.is_alive() and time.time() < deadline and killed is None:
        done = out.read_text().count("\n") if out.exists() else 0
        pids = _answerer_pids()
        if done >= 2 and pids:  # a block has come back and the actors are answering the others
            os.kill(pids[0], signal.SIGKILL)
            killed, done_at_kill = pids[0], done
        time.sleep(0.05)
    t.join(600)
    assert not t.is_alive() and not errors, errors
    assert killed is not None and done_at_kill < len(big), "the run ended before a worker could be killed"
    # Ray restarted the actor and retried its block: every item answered, as the single process answers it
    assert out.read_text() == (tmp_path / "one.jsonl").read_text()
