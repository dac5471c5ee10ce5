"""The automatic curation funnel: candidate import, stages, report and contact sheet (no database)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance

from training import curation
from training.aesthetic import AestheticHead, AestheticMLP
from training.clip_scoring import ClipScorer, load_clip, save_tiny_clip
from training.curation import (
    AestheticStage,
    ClipScoreStage,
    CurationError,
    FunnelCandidate,
    NearDuplicateStage,
    ResolutionStage,
    TextInImageStage,
    contact_sheet,
    contact_sheet_size,
    hamming,
    near_duplicate_pairs,
    perceptual_hash,
    run_funnel,
    scan_candidates,
)
from training.tests.curated_datasets import picture


def pattern(seed: int, size=(320, 240)) -> Image.Image:
    """A distinct structured picture, larger and busier than the funnel runs' pictures."""
    return picture(seed, size, ellipses=6, widths=(20, 100))


def jpeg_recompressed(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def write_jsonl(folder, rows):
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def fake_candidate(name: str, width: int, height: int) -> FunnelCandidate:
    return FunnelCandidate(name, None, f"caption of {name}", width, height, name * 4, "PNG", width * height)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return load_clip(None, save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", seed=0), batch_size=4)


@pytest.fixture(scope="module")
def head():
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return AestheticHead(AestheticMLP(32))


# --- import ---------------------------------------------------------------------------------------------------


def test_scan_reports_each_problem_by_file_and_line_and_imports_the_good_files(tmp_path):
    pattern(1).save(tmp_path / "good.png")
    pattern(2).save(tmp_path / "also good.jpg", quality=90)
    pattern(3).save(tmp_path / "uncaptioned.png")
    pattern(4).save(tmp_path / "empty.png")
    pattern(5).save(tmp_path / "repeated.png")
    buffer = io.BytesIO()
    pattern(6).save(buffer, "PNG")
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "notes.jpg").write_text("this is a text file, not a JPEG")
    write_jsonl(
        tmp_path,
        [
            {"file": "good.png", "caption": "a colourful field"},
            {"file": "also good.jpg", "caption": "ellipses, on a field"},
            {"file": "truncated.png", "caption": "cut in half"},
            {"file": "notes.jpg", "caption": "not an image"},
            {"file": "missing.png", "caption": "nobody saved me"},
            '{"file": "broken.png", "caption": ',
            {"file": "empty.png", "caption": "   "},
            {"file": "repeated.png", "caption": "twice"},
            {"file_name": "repeated.png", "text": "twice"},
        ],
    )
    scan = scan_candidates(tmp_path)

    assert [c.id for c in scan.candidates] == ["also good.jpg", "good.png", "repeated.png"]
    good = scan.candidates[1]
    assert (good.width, good.height, good.format, good.caption) == (320, 240, "PNG", "a colourful field")
    assert good.sha256 == __import__("hashlib").sha256((tmp_path / "good.png").read_bytes()).hexdigest()
    by_kind = {(p.kind, p.file or p.line) for p in scan.problems}
    assert by_kind == {
        ("truncated_image", "truncated.png"),
        ("unreadable_image", "notes.jpg"),
        ("missing_caption", "uncaptioned.png"),
        ("missing_file", "missing.png"),
        ("malformed_caption_line", 6),
        ("empty_caption", "empty.png"),
        ("duplicate_caption", "repeated.png"),
    }
    text = {p.kind: str(p) for p in scan.problems}
    assert text["missing_file"].startswith("captions.jsonl line 5: captions missing.png")
    assert text["malformed_caption_line"].startswith("captions.jsonl line 6: is not valid JSON")
    assert text["unreadable_image"] == "notes.jpg: is not an image file (Pillow cannot identify it) although named .jpg"
    assert "truncated" in text["truncated_image"] and "re-download or re-export" in text["truncated_image"]
    assert [p.kind for p in scan.warnings] == ["duplicate_caption"]  # identical rows: imported once
    assert "captions.jsonl line 8, captions.jsonl line 9" in text["duplicate_caption"]


def test_csv_captions_conflicts_and_bad_lines(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c.png", "d.webp"]):
        pattern(i).save(tmp_path / name)
    (tmp_path / "captions.csv").write_text(
        "file,caption\n"
        'a.png,"a field, with ellipses"\n'
        "b.png,first caption\n"
        "c.png,one,two\n"
        "b.png,second caption\n"
        "./d.webp,a webp\n",
        encoding="utf-8",
    )
    scan = scan_candidates(tmp_path)
    assert {c.id: c.caption for c in scan.candidates} == {"a.png": "a field, with ellipses", "d.webp": "a webp"}
    assert scan.candidates[1].format == "WEBP"
    problems = {p.kind: p for p in scan.problems}
    assert problems["malformed_caption_line"].line == 4 and "3 field(s)" in str(problems["malformed_caption_line"])
    assert problems["duplicate_caption"].severity == "error" and "different caption rows" in str(
        problems["duplicate_caption"]
    )
    assert problems["missing_caption"].file == "c.png"  # its only row was malformed

    (tmp_path / "captions.csv").write_text("image,text\na.png,x\n", encoding="utf-8")
    scan = scan_candidates(tmp_path)
    assert scan.candidates == ()
    assert "header must name the columns file and caption (found: image,text)" in str(scan.problems[0])


def test_missing_caption_file_exact_duplicates_and_unsupported_formats(tmp_path):
    pattern(1).save(tmp_path / "a.png")
    scan = scan_candidates(tmp_path)
    assert scan.problems[0].kind == "caption_file_missing" and "captions.csv" in scan.problems[0].message
    assert {p.kind for p in scan.problems} == {"caption_file_missing", "missing_caption"}

    (tmp_path / "copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    pattern(2).save(tmp_path / "anim.gif")
    pattern(3).save(tmp_path / "gif-named.png", format="GIF")
    write_jsonl(tmp_path, [{"file": n, "caption": "x"} for n in ("a.png", "copy.png", "anim.gif", "gif-named.png")])
    scan = scan_candidates(tmp_path)
    assert [c.id for c in scan.candidates] == ["a.png"]
    problems = {p.file: p for p in scan.problems}
    assert problems["copy.png"].kind == "exact_duplicate" and problems["copy.png"].duplicate_of == "a.png"
    assert problems["anim.gif"].kind == "unsupported_format"
    assert problems["gif-named.png"].kind == "unsupported_format" and "GIF" in problems["gif-named.png"].message


def test_scan_only_reads(tmp_path):
    pattern(1).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_jsonl(tmp_path, [{"file": "a.png", "caption": "x"}, {"file": "bad.png", "caption": "y"}])
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    scan_candidates(tmp_path)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()} == before


# --- stages ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kept"),
    [
        ((100, 100), True),  # short side exactly the minimum
        ((99, 150), False),  # one pixel short
        ((200, 100), True),  # aspect exactly 2
        ((100, 200), True),  # portrait, aspect exactly 2
        ((201, 100), False),  # just over 2
        ((100, 201), False),
    ],
)
def test_resolution_and_aspect_boundaries_are_inclusive(size, kept):
    result = run_funnel([fake_candidate("x.png", *size)], [ResolutionStage(min_side=100, max_aspect_ratio=2.0)])
    assert (len(result.kept) == 1) is kept
    if not kept:
        reason = result.rejected[0].reason
        assert (
            ("short side 99 px < minimum 100 px" in reason)
            if size[0] == 99
            else ("aspect ratio 2.010 > maximum 2" in reason)
        )


def test_resolution_aspect_ratio_from_a_fraction():
    stage = ResolutionStage(min_side=300, max_aspect_ratio=4 / 3)
    result = run_funnel([fake_candidate("a", 400, 300), fake_candidate("b", 401, 300)], [stage])
    assert [c.id for c in result.kept] == ["a"]


def near_duplicate_folder(folder):
    """An original, three altered copies of it, and six unrelated pictures."""
    folder.mkdir()
    original = pattern(1)
    original.save(folder / "original.png")
    original.resize((288, 216), Image.Resampling.LANCZOS).save(folder / "resized.png")
    jpeg_recompressed(original).save(folder / "recompressed.jpg", quality=60)
    ImageEnhance.Brightness(original).enhance(1.15).resize((300, 225)).save(folder / "brighter.png")
    for i in range(6):
        pattern(20 + i).save(folder / f"other-{i}.png")
    write_jsonl(folder, [{"file": p.name, "caption": f"picture {p.stem}"} for p in sorted(folder.iterdir())])
    return scan_candidates(folder)


def test_perceptual_hash_groups_altered_copies_and_separates_different_images(tmp_path):
    original = pattern(1)
    copies = [
        original.resize((288, 216), Image.Resampling.LANCZOS),
        original.resize((160, 120), Image.Resampling.BILINEAR),
        jpeg_recompressed(original, 50),
        ImageEnhance.Brightness(original).enhance(1.15),
        ImageEnhance.Brightness(original).enhance(0.8),
    ]
    reference = perceptual_hash(original)
    assert max(hamming(reference, perceptual_hash(copy)) for copy in copies) <= 4
    others = [perceptual_hash(pattern(100 + i)) for i in range(12)] + [reference]
    distances = [hamming(a, b) for k, a in enumerate(others) for b in others[k + 1 :]]
    assert min(distances) > 12


def test_near_duplicate_stage_keeps_the_largest_and_names_it(tmp_path):
    scan = near_duplicate_folder(tmp_path / "c")
    assert not scan.problems
    result = run_funnel(scan.candidates, [NearDuplicateStage(max_hamming=8)])
    assert sorted(c.id for c in result.kept) == ["original.png"] + [f"other-{i}.png" for i in range(6)]
    rejected = {r.candidate.id: r for r in result.rejected}
    assert set(rejected) == {"resized.png", "recompressed.jpg", "brighter.png"}
    # recompressed.jpg has as many pixels as the original: the larger (PNG) file wins the tie.
    assert all(r.duplicate_of == "original.png" and r.stage == "near_duplicate" for r in rejected.values())
    assert "near duplicate of original.png (hash distance" in rejected["resized.png"].reason
    assert "320x240 vs 288x216" in rejected["resized.png"].reason
    assert len(result.scores["original.png"]["phash"]) == 16


def test_near_duplicate_keeps_the_best_aesthetic_score_when_a_head_is_given(tmp_path, scorer, head):
    scan = near_duplicate_folder(tmp_path / "c")
    result = run_funnel(scan.candidates, [NearDuplicateStage(max_hamming=8)], scorer=scorer, aesthetic_head=head)
    group = ["original.png", "resized.png", "recompressed.jpg", "brighter.png"]
    best = max(group, key=lambda name: result.scores[name]["aesthetic_score"])
    assert [c.id for c in result.kept if c.id in group] == [best]
    assert all(r.duplicate_of == best and "aesthetic" in r.reason for r in result.rejected)
    # Only the candidates that have near duplicates were embedded.
    assert set(result.image_embeddings) == set(group)


def test_near_duplicate_pair_search_methods_agree():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=3000, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(
        0, 2, 3000
    ).astype(np.uint64)
    planted = []
    for k in range(200):  # copies with 0-6 flipped bits
        source = int(hashes[k * 7])
        flips = rng.choice(64, size=k % 7, replace=False)
        planted.append(source ^ sum(1 << int(b) for b in flips))
    hashes = [int(h) for h in hashes] + planted
    brute = near_duplicate_pairs(hashes, 6, method="all_pairs")
    indexed = near_duplicate_pairs(hashes, 6, method="multi_index")
    np.testing.assert_array_equal(brute, indexed)
    assert len(brute) >= 200
    assert all(d <= 6 and i < j for i, j, d in brute.tolist())
    assert near_duplicate_pairs(hashes, 6).tolist() == brute.tolist()  # "auto" picks multi-index here


def test_ocr_stage_without_tesseract_is_recorded_as_skipped(monkeypatch):
    monkeypatch.setattr(curation.stages, "ocr_unavailable_reason", lambda: "OCR is unavailable: no tesseract here")
    candidates = [fake_candidate("a", 600, 600), fake_candidate("b", 100, 100)]
    result = run_funnel(candidates, [TextInImageStage(max_words=3), ResolutionStage(min_side=512)])
    ocr = result.stage("text_in_image")
    assert (ocr.status, ocr.skipped_reason, ocr.count_in, ocr.count_out) == (
        "skipped",
        "OCR is unavailable: no tesseract here",
        2,
        2,
    )
    assert result.report()["stages"][0]["status"] == "skipped"
    assert result.stage("resolution").count_in == 2


@pytest.mark.skipif(curation.ocr_unavailable_reason() is None, reason="tesseract is installed here")
def test_real_ocr_availability_check_names_what_is_missing():
    reason = curation.ocr_unavailable_reason()
    assert reason.startswith("OCR is unavailable") and ("pytesseract" in reason or "tesseract" in reason)


def test_ocr_stage_counts_words_with_a_given_engine(tmp_path):
    for name in ("poster.png", "photo.png"):
        pattern(len(name)).save(tmp_path / name)
    write_jsonl(tmp_path, [{"file": "poster.png", "caption": "x"}, {"file": "photo.png", "caption": "y"}])
    texts = {"poster.png": "SALE 50% OFF everything", "photo.png": "| . ~ a"}
    scan = scan_candidates(tmp_path)
    engine = {}

    def fake_ocr(image):
        return texts[engine["next"].pop(0)]

    engine["next"] = [c.id for c in scan.candidates]
    result = run_funnel(scan.candidates, [TextInImageStage(max_words=2, ocr=fake_ocr)])
    assert [c.id for c in result.kept] == ["photo.png"]
    assert result.scores["poster.png"]["ocr_words"] == 4 and result.scores["photo.png"]["ocr_words"] == 0
    assert result.rejected[0].reason == "4 words of text in the image > maximum 2"
    assert result.stage("text_in_image").config == {"max_words": 2, "language": "eng", "ocr_engine": "fake_ocr"}


@pytest.mark.skipif(curation.ocr_unavailable_reason() is not None, reason="tesseract or pytesseract is not installed")
def test_real_tesseract_rejects_a_poster_and_keeps_a_photo(tmp_path):
    from PIL import ImageFont

    poster = Image.new("RGB", (640, 360), "white")
    draw = ImageDraw.Draw(poster)
    font = ImageFont.load_default(size=44)
    for row, line in enumerate(["GRAND OPENING SALE", "EVERYTHING HALF PRICE", "THIS WEEKEND ONLY"]):
        draw.text((30, 40 + 100 * row), line, fill="black", font=font)
    poster.save(tmp_path / "poster.png")
    pattern(3, size=(640, 360)).save(tmp_path / "photo.png")
    write_jsonl(
        tmp_path, [{"file": "poster.png", "caption": "a shop poster"}, {"file": "photo.png", "caption": "a field"}]
    )

    result = run_funnel(scan_candidates(tmp_path).candidates, [TextInImageStage(max_words=5)])
    stage = result.stage("text_in_image")
    assert stage.status == "ran" and stage.config["ocr_engine"] == "tesseract"
    assert [c.id for c in result.kept] == ["photo.png"]
    assert result.scores["poster.png"]["ocr_words"] >= 7  # tesseract may misread a word, not most of nine
    assert result.scores["photo.png"]["ocr_words"] <= 1


# --- CLIP-based stages and the whole funnel -------------------------------------------------------------------


@pytest.fixture
def collection(tmp_path):
    folder = tmp_path / "candidates"
    folder.mkdir()
    rows = []
    for i in range(10):
        pattern(50 + i, size=(128 + 6 * i, 96)).save(folder / f"{i:02d}.png")
        rows.append({"file": f"{i:02d}.png", "caption": ["a red bird", "a city at night", "a bowl of soup"][i % 3]})
    pattern(50, size=(128, 96)).resize((120, 90)).save(folder / "10.png")  # near duplicate of 00.png
    pattern(70, size=(300, 60)).save(folder / "11.png")  # too wide
    pattern(71, size=(40, 40)).save(folder / "12.png")  # too small
    rows += [{"file": f"{i}.png", "caption": "extra"} for i in (10, 11, 12)]
    write_jsonl(folder, rows)
    scan = scan_candidates(folder)
    assert len(scan.candidates) == 13 and not scan.problems
    return scan.candidates


def test_clip_stage_scores_match_open_clip_and_threshold_applies(collection, scorer):
    import open_clip

    first = run_funnel(collection, [ClipScoreStage(min_score=-1000)], scorer=scorer)
    scores = np.array([first.scores[c.id]["clip_score"] for c in collection])
    again = run_funnel(collection, [ClipScoreStage(min_score=-1000)], scorer=scorer)
    np.testing.assert_array_equal([again.scores[c.id]["clip_score"] for c in collection], scores)  # deterministic

    # Direct open_clip computation with the same model: normalised embeddings, cosine.
    tokenizer = open_clip.get_tokenizer(f"local-dir:{scorer.weights_path.parent}")
    with torch.no_grad():
        image = scorer.model.encode_image(torch.stack([scorer.preprocess(c.open_image()) for c in collection]))
        text = scorer.model.encode_text(tokenizer([c.caption for c in collection]))
    cosine = torch.nn.functional.cosine_similarity(image, text).numpy()
    np.testing.assert_allclose(scores / 100.0, cosine, atol=1e-5)

    threshold = float(np.median(scores))
    result = run_funnel(collection, [ClipScoreStage(min_score=threshold)], scorer=scorer)
    assert {c.id for c in result.kept} == {c.id for c, s in zip(collection, scores) if s >= threshold}
    assert all(r.reason.startswith("CLIP score") and f"< minimum {threshold:g}" in r.reason for r in result.rejected)


def test_embeddings_are_computed_once_in_batches_and_shared(collection, scorer, head, monkeypatch):
    image_batches, text_batches = [], []
    embed_images, embed_texts = ClipScorer.embed_images, ClipScorer.embed_texts
    monkeypatch.setattr(
        ClipScorer, "embed_images", lambda self, images: image_batches.append(len(images)) or embed_images(self, images)
    )
    monkeypatch.setattr(
        ClipScorer, "embed_texts", lambda self, texts: text_batches.append(len(texts)) or embed_texts(self, texts)
    )
    stages = [
        ResolutionStage(min_side=64, max_aspect_ratio=2.0),
        NearDuplicateStage(max_hamming=8),
        ClipScoreStage(min_score=-1000),
        AestheticStage(min_score=-1000),
    ]
    result = run_funnel(collection, stages, scorer=scorer, aesthetic_head=head, batch_size=4)
    assert result.stage("clip_score").count_in == 10  # 11.png too wide, 12.png too small, 10.png a near duplicate
    # The near-duplicate group (00.png, 10.png) was embedded for the aesthetic tie-break, the 9 other survivors
    # for the CLIP stage, and the aesthetic stage reused them all: 11 images, each embedded exactly once, in batches.
    assert image_batches == [2, 4, 4, 1]
    assert sum(image_batches) == len(result.image_embeddings) == 11
    assert sum(text_batches) == 3  # three distinct captions among the survivors
    assert all("aesthetic_score" in result.scores[c.id] and "clip_score" in result.scores[c.id] for c in result.kept)


def test_funnel_counts_report_and_contact_sheets(collection, scorer, head, tmp_path, monkeypatch):
    monkeypatch.setattr(
        curation.stages, "ocr_unavailable_reason", lambda: "OCR is unavailable: the tesseract binary is not on PATH"
    )
    probe = run_funnel(
        collection,
        [ClipScoreStage(min_score=-1000), AestheticStage(min_score=-1000)],
        scorer=scorer,
        aesthetic_head=head,
    )
    aesthetic = sorted(probe.scores[c.id]["aesthetic_score"] for c in collection)
    clip = sorted(probe.scores[c.id]["clip_score"] for c in collection)
    stages = [
        ResolutionStage(min_side=64, max_aspect_ratio=2.0),
        TextInImageStage(max_words=3),
        NearDuplicateStage(max_hamming=8),
        ClipScoreStage(min_score=clip[2]),
        AestheticStage(min_score=aesthetic[4]),
    ]
    result = run_funnel(collection, stages, scorer=scorer, aesthetic_head=head)
    report = result.report(bins=5)
    json.dumps(report)  # JSON-ready for the Django side

    counts = [(s["name"], s["status"], s["count_in"], s["count_out"], s["rejected"]) for s in report["stages"]]
    assert counts[0] == ("resolution", "ran", 13, 11, 2)
    assert counts[1][:4] == ("text_in_image", "skipped", 11, 11)
    assert report["stages"][1]["skipped_reason"].startswith("OCR is unavailable")
    for before, after in zip(report["stages"], report["stages"][1:]):
        assert after["count_in"] == before["count_out"]
    for stage in report["stages"]:
        assert stage["count_in"] - stage["count_out"] == stage["rejected"]
    assert report["count_in"] == 13 == report["count_kept"] + report["count_rejected"]
    assert report["stages"][0]["config"] == {"min_side": 64, "max_aspect_ratio": 2.0}
    assert report["stages"][4]["config"] == {"min_score": aesthetic[4]}

    for key in ("clip_score", "aesthetic_score"):
        histogram = report["histograms"][key]
        scored = sum(key in scores for scores in result.scores.values())
        assert sum(histogram["counts"]) == histogram["n"] == scored
        assert len(histogram["bin_edges"]) == 6
    assert report["histograms"]["clip_score"]["n"] == 10  # all that reached the CLIP stage
    table = result.candidate_table()
    assert len(table) == 13 and sum(row["kept"] for row in table) == report["count_kept"]

    kept_sheet = contact_sheet(result, tmp_path / "kept.png", kept=True, n=24, columns=4, thumb=64)
    with Image.open(kept_sheet) as image:
        assert image.size == contact_sheet_size(len(result.kept), columns=4, thumb=64)
    rejected_sheet = contact_sheet(result, tmp_path / "rejected.jpg", kept=False, n=5, columns=4, thumb=64)
    with Image.open(rejected_sheet) as image:
        assert image.size == contact_sheet_size(5, columns=4, thumb=64) == (4 * 76, 28 + 2 * (76 + 4 * 13))
        assert image.format == "JPEG"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary files left


def test_funnel_refuses_a_configuration_that_cannot_run(collection, scorer):
    with pytest.raises(CurationError, match="needs a CLIP model"):
        run_funnel(collection, [ClipScoreStage()])
    with pytest.raises(CurationError, match="needs a CLIP model and an aesthetic head"):
        run_funnel(collection, [AestheticStage()], scorer=scorer)
    with pytest.raises(CurationError, match="takes 16-d embeddings but the CLIP model gives 32-d"):
        run_funnel(collection, [AestheticStage()], scorer=scorer, aesthetic_head=AestheticHead(AestheticMLP(16)))
    with pytest.raises(CurationError, match="used twice"):
        run_funnel(collection, [ResolutionStage(), ResolutionStage(min_side=10)])
