"""``dlrm-mlet frontier`` on hand-made sweep CSVs, and the serving precisions' sizes and refusals."""

import pytest
import torch

from dlrm_mlet.cli import main
from dlrm_mlet.errors import MLETError
from dlrm_mlet.tools import serving
from dlrm_mlet.tools.frontier import frontier, served_rows
from dlrm_mlet.tools.sweep import tables_of
from test_report import MIB, diverged, row, write

QR = "qr mult c4 t200"


def served(r, bits, val, test, size):
    return {**r, **dict(zip(serving.fields(bits), (val, test, 0.5, size)))}


def point(d, k, aucs, tables="plain", lr=0.1, size=None, int8=None):
    """Seeds of one arm at one lr (validation AUC = test AUC); ``int8``: its int8 AUCs."""
    size = size or d * MIB // 4
    rows = [row(d=d, k=k, lr=lr, seed=s, val_auc=a, test_auc=a, tables=tables, inference_embedding_bytes=size)
            for s, a in enumerate(aucs)]
    if int8 is not None:
        rows = [served(r, 8, a, a, size // 4) for r, a in zip(rows, int8)]
    return rows


@pytest.fixture
def frontier_csv(tmp_path):
    rows = (point(16, 0, [0.750, 0.752, 0.748], int8=[0.749, 0.751, 0.747])  # the reference
            + point(4, 0, [0.700, 0.702, 0.698], int8=[0.699, 0.701, 0.697])
            + point(4, 64, [0.745, 0.747, 0.746], int8=[0.744, 0.746, 0.745])  # keeps it within one se
            + point(4, 64, [0.760, 0.760, 0.760], lr=1.6, int8=[0.1, 0.1, 0.1])[:2]  # a diverged seed below
            + [diverged(d=4, k=64, lr=1.6, seed=2)]
            + point(16, 0, [0.740, 0.741, 0.739], tables=QR, size=16 * MIB // 16)
            + point(16, 64, [0.751, 0.750, 0.749], tables=QR, size=16 * MIB // 16))
    return write(tmp_path, rows)


def test_each_precision_is_its_own_point_and_a_diverged_seed_keeps_its_lr_out_everywhere(frontier_csv):
    from dlrm_mlet.tools.results_csv import read_rows

    rows = served_rows(read_rows(frontier_csv))
    int8 = [r for r in rows if r["serving"] == "int8"]
    assert {r["tables"] for r in int8} == {"plain"}  # QR rows were never quantized: no int8 point
    blown = [r for r in int8 if r["status"] != "ok"]
    assert len(blown) == 1 and blown[0]["lr"] == "1.6"
    assert all(r["inference_embedding_bytes"] == r["inference_embedding_bytes_int8"] != "" for r in int8
               if r["status"] == "ok")


def test_frontier_gives_the_pareto_set_and_the_smallest_model_that_keeps_the_baseline_auc(frontier_csv, tmp_path):
    text = frontier(frontier_csv, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 0
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:4]): line for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("| configuration")}
    # lr 1.6 had a diverged seed: MLET d=4 is reported at lr 0.1 in fp32 and int8
    assert "| 0.1 |" in lines["MLET", "fp32", "4", "64"] and "| 0.1 |" in lines["MLET", "int8", "4", "64"]
    assert lines["MLET", "int8", "4", "64"].rstrip().endswith("| yes |")  # the smallest point that good
    assert lines["QR mult c4 t200+MLET", "fp32", "16", "64"].rstrip().endswith("| yes |")
    assert lines["plain", "int8", "16", "-"].rstrip().endswith("|  |")  # as small, AUC lower: not in the set
    assert "Reference: plain baseline d=16, fp32, test AUC 0.7500" in text
    # MLET d=4 int8 lost 0.005, four se; QR+MLET keeps the AUC at a quarter of the size, and so does int8
    assert "- QR mult c4 t200+MLET fp32: d=16 k=64, AUC +0.0000 ± 0.0013, 4.0x smaller" in text
    assert "- plain int8: d=16, AUC -0.0010 ± 0.0016, 4.0x smaller" in text
    assert "MLET int8: no point keeps the reference's AUC" in text
    assert "Smallest model that keeps the reference's AUC: QR mult c4 t200+MLET fp32" in text  # ties: higher AUC


def test_frontier_command_keeps_a_file_that_exists_and_names_a_bad_file(frontier_csv, tmp_path, capsys):
    out = tmp_path / "f.md"
    out.write_text("mine")
    assert main(["frontier", frontier_csv, "--markdown", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    printed = capsys.readouterr().out
    assert f"{out} exists: kept (pass --force to replace it)" in printed and out.read_text() == "mine"
    assert "| MLET |" in printed and (tmp_path / "p.png").exists()  # the tables print, the new plot is drawn
    bad = write(tmp_path, [row(d="four", inference_embedding_bytes=1, training_embedding_bytes=1)], "bad.csv")
    with pytest.raises(MLETError, match="bad.csv: not a readable sweep results file"):
        frontier(bad)


@pytest.mark.parametrize("bits", serving.BITS)
@pytest.mark.parametrize("d", [4, 16, 64])
def test_the_served_bytes_are_what_dlrm_prepacks(bits, d):
    weight = torch.randn(10, d)
    pack = torch.ops.quantized.embedding_bag_byte_prepack if bits == 8 else \
        torch.ops.quantized.embedding_bag_4bit_prepack
    packed = pack(weight)
    assert serving.quantized_bytes({"emb_l.0.weight": weight}, bits) == packed.numel() * packed.element_size()


@pytest.mark.parametrize("bits, widths, args, message", [
    ([3], [4], [], "8, 4 .* or onnx .*, not 3"),
    ([8], [4], ["--qr-flag"], "--quantize with --qr-flag: quantized serving is scored for plain tables only"),
    (["onnx"], [4], ["--qr-flag"], "--quantize with --qr-flag"),
    ([4], [4], ["--md-flag", "--md-threshold=0"], "--quantize with --md-flag"),
    ([4], [4, 5], [], "4-bit tables need an even width, not d=5"),
    ([8], [4], ["--quantize-emb-with-bit=8"], "with --quantize, not --quantize-emb-with-bit"),
])
def test_a_precision_stock_cannot_serve_is_refused_before_training(bits, widths, args, message):
    with pytest.raises(MLETError, match=message):
        serving.check(bits, widths, args)
    serving.check([], widths, args)  # no precision asked: nothing to refuse


def test_tables_are_named_by_dlrm_flags_with_dlrm_defaults():
    assert tables_of([]) == "plain"
    assert tables_of(["--qr-flag"]) == QR
    assert tables_of(["--qr-flag", "--qr-operation=concat", "--qr-collisions", "8"]) == "qr concat c8 t200"
    assert tables_of(["--md-flag", "--md-threshold=0", "--md-round-dims"]) == "md T0.3 t0 round"
