"""The ``clipsearch`` command line (help, ``eval`` JSON, error exits) and reading data files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import make_dataset
from typer.testing import CliRunner

import app.cli
from models.data import detect_separator, read_pairs
from models.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "clipsearch-tiny", "--pretrained", "none", "--workers", "0"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds"), n=10, size=40)


@pytest.fixture(scope="module")
def labelled(dataset: Path) -> Path:
    """The same images with their shape as a class label, in a TSV file."""
    with open(dataset, newline="") as f:
        rows = list(csv.DictReader(f))
    out = dataset.with_name("labels.tsv")
    with open(out, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "label"])
        for row in rows:
            writer.writerow([row["filepath"], Path(row["filepath"]).stem.split("_")[2]])
    return out


def _run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str):
    """Run the console-script entry point in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["clipsearch", *args])
    with pytest.raises(SystemExit) as info:
        app.cli.main()
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


# --- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "eval"),
        (["eval"], "retrieval"),
        (["eval", "retrieval"], "--pretrained"),
        (["eval", "zeroshot"], "--label-col"),
    ],
)
def test_help(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app.cli.app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert expected in result.output


# --- eval ---------------------------------------------------------------------------------------


def test_eval_retrieval_json(dataset: Path) -> None:
    args = ["eval", "retrieval", "--data", str(dataset), "--image-root", str(dataset.parent)]
    result = CliRunner().invoke(app.cli.app, [*args, *TINY, "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    assert set(m) == {"image_to_text", "text_to_image", "n_images", "n_texts"}
    assert set(m["image_to_text"]) == set(m["text_to_image"]) == {"R@1", "R@5", "R@10"}
    assert (m["n_images"], m["n_texts"]) == (10, 10)
    assert all(0 <= v <= 100 for d in ("image_to_text", "text_to_image") for v in m[d].values())


def test_eval_retrieval_table(dataset: Path) -> None:
    args = ["eval", "retrieval", "--data", str(dataset), *TINY, "--precision", "bf16"]
    result = CliRunner().invoke(app.cli.app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "R@10" in result.stdout
    assert "text to image" in result.stdout
    assert "precision=bf16" in result.stdout


def test_eval_zeroshot_json(labelled: Path) -> None:
    args = ["eval", "zeroshot", "--data", str(labelled), *TINY, "--json"]
    result = CliRunner().invoke(app.cli.app, args)
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    assert set(m) == {"top1", "top5", "n"}
    assert m["n"] == 10
    assert m["top5"] == 100.0  # 4 shapes at most


# --- errors: one line on stderr, exit status 2 -----------------------------------------------


def test_missing_data_file(monkeypatch, capsys, tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    code, out, err = _run_main(monkeypatch, capsys, "eval", "retrieval", "--data", str(missing))
    assert code == 2
    assert err.startswith("error: data file not found")
    assert str(missing) in err
    assert out == ""


def test_missing_column(monkeypatch, capsys, dataset: Path) -> None:
    args = ["eval", "retrieval", "--data", str(dataset), "--text-col", "text", *TINY]
    code, _, err = _run_main(monkeypatch, capsys, *args)
    assert code == 2
    assert "no column 'text'" in err
    assert "line 2" in err
    assert "--text-col" in err


def test_missing_label_column(monkeypatch, capsys, dataset: Path) -> None:
    code, _, err = _run_main(monkeypatch, capsys, "eval", "zeroshot", "--data", str(dataset), *TINY)
    assert code == 2
    assert "no column 'label'" in err


def test_missing_image(monkeypatch, capsys, dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "captions.csv"
    data.write_text(dataset.read_text() + "images/gone.png,a missing picture\n")
    args = ["eval", "retrieval", "--data", str(data), "--image-root", str(dataset.parent), *TINY]
    code, _, err = _run_main(monkeypatch, capsys, *args)
    assert code == 2
    assert "line 12" in err
    assert "image not found" in err
    assert str(dataset.parent / "images" / "gone.png") in err


def test_bad_weights_and_precision(monkeypatch, capsys, dataset: Path) -> None:
    base = ["eval", "retrieval", "--data", str(dataset), "--model", "clipsearch-tiny"]
    code, _, err = _run_main(monkeypatch, capsys, *base, "--pretrained", "/no/such/w.safetensors")
    assert code == 2
    assert "weights file not found" in err
    code, _, err = _run_main(monkeypatch, capsys, *base, "--pretrained", "none", "--precision", "x")
    assert code == 2
    assert "precision" in err


def test_console_script_exit_code(tmp_path: Path) -> None:
    script = ROOT / ".venv" / "bin" / "clipsearch"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    args = ["eval", "retrieval", "--data", str(tmp_path / "missing.csv")]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "error: data file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- data files -------------------------------------------------------------------------------


def test_tab_separated_file_is_detected(tmp_path: Path) -> None:
    path = make_dataset(tmp_path, n=4, size=16, sep="\t")
    assert detect_separator(path.read_text().splitlines()[0]) == "\t"
    pairs = read_pairs(path)
    assert len(pairs) == 4
    assert pairs[0].text.startswith("a ") and " on a " in pairs[0].text
    assert pairs[0].image == tmp_path / pairs[0].image.relative_to(tmp_path)
    assert all(p.image.is_file() for p in pairs)
    assert [p.line for p in pairs] == [2, 3, 4, 5]


def test_comma_inside_quoted_caption(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=1, size=16)
    image = next((tmp_path / "images").iterdir()).name
    path = tmp_path / "c.csv"
    path.write_text(f'filepath,caption\nimages/{image},"red, round and bright"\n')
    assert read_pairs(path)[0].text == "red, round and bright"


def test_jsonl_file(tmp_path: Path) -> None:
    csv_path = make_dataset(tmp_path, n=3, size=16)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"filepath": r["filepath"], "caption": r["caption"]}) for r in rows]
    path.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    pairs = read_pairs(path)
    assert [p.text for p in pairs] == [r["caption"] for r in rows]
    assert [p.line for p in pairs] == [1, 3, 4]


def test_split_filter(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2, size=16)
    a, b = sorted(p.name for p in (tmp_path / "images").iterdir())
    path = tmp_path / "s.csv"
    path.write_text(f"filepath,caption,split\nimages/{a},one,train\nimages/{b},two,test\n")
    assert [p.text for p in read_pairs(path, split="test")] == ["two"]
    with pytest.raises(DataError, match="no rows with split='val'"):
        read_pairs(path, split="val")


def test_missing_column_names_column_and_line(tmp_path: Path) -> None:
    path = make_dataset(tmp_path, n=2, size=16)
    with pytest.raises(DataError, match=r"line 2: no column 'text' \(columns: filepath, caption\)"):
        read_pairs(path, text_col="text")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"filepath": "images/x.png", "caption": "c"}\n{"filepath": "y.png"}\n')
    with pytest.raises(DataError, match="line 2: no column 'caption'"):
        read_pairs(jsonl, check_images=False)


def test_missing_image_names_line_and_path(tmp_path: Path) -> None:
    path = make_dataset(tmp_path, n=2, size=16)
    gone = sorted((tmp_path / "images").iterdir())[1]
    gone.unlink()
    with pytest.raises(DataError, match="line 3: image not found") as info:
        read_pairs(path)
    assert str(gone) in str(info.value)


def test_short_row_and_empty_value(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("filepath,caption\nimages/a.png,fine\nimages/b.png\n")
    with pytest.raises(DataError, match="line 3: empty 'caption'"):
        read_pairs(path, check_images=False)
    path.write_text("filepath,caption\n,no image\n")
    with pytest.raises(DataError, match="line 2: empty 'filepath'"):
        read_pairs(path, check_images=False)


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_text("filepath;caption\nimages/a.png;a caption\n", encoding="utf-8-sig")
    pairs = read_pairs(path, check_images=False)
    assert [(p.image.name, p.text) for p in pairs] == [("a.png", "a caption")]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_text('{"filepath": "a.png", "caption": "c"}\n', encoding="utf-8-sig")
    assert read_pairs(jsonl, check_images=False)[0].text == "c"


def test_bad_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"filepath": "a.png", "caption": "c"}\n{not json\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        read_pairs(path, check_images=False)
