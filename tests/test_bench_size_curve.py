"""bench/size_curve.py: the Markdown table of a result file (the rows themselves take hours to make)."""

from __future__ import annotations

from bench import size_curve


def _row(size, arm, **kw):
    return {"domain": "cifar10", "size": size, "arm": arm, "epochs": 2, "rule_choice": "lp_ft",
            "rule": "small_thin_evidence", **kw}


def test_table_orders_rows_and_shows_each_measure():
    rows = [_row(5000, "finetune_all", accuracy=0.8123, seconds=600.4, expected_s=400.0, ratio=1.501,
                 peak_rss_mib=2600.7),
            _row(1000, "scratch_trial", fallback={"chosen": "pretrained", "val_accuracy":
                                                  {"pretrained": 0.71, "random": 0.2}}),
            _row(1000, "scratch", accuracy=0.1, invalid="all-zero weights"),
            _row(1000, "linear_probe", accuracy=0.66, seconds=83.5, expected_s=25.6, ratio=3.264,
                 peak_rss_mib=2529.2)]
    lines = size_curve.table(rows).splitlines()
    assert lines[0].startswith("| domain | images | arm |")
    assert lines[2] == ("| cifar10 | 1,000 | linear_probe | 2 | 0.660 | 84 | 26 | 3.26 | 2,529 "
                        "| lp_ft (small_thin_evidence) | - |")
    assert lines[3] == ("| cifar10 | 1,000 | scratch_trial | 2 | - | - | - | - | - | lp_ft (small_thin_evidence) "
                        "| pretrained (val 0.710 pretrained, 0.200 random) |")
    assert lines[4].startswith("| cifar10 | 5,000 | finetune_all | 2 | 0.812 | 600 | 400 | 1.50 | 2,601 |")
    assert len(lines) == 5
