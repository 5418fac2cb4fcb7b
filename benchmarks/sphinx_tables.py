"""A Sphinx extension for the docs: tables read from the measured results in ``benchmarks/results/``, so the
numbers have one source.

``.. norm-cost:: SN SSN`` (MyST: ```` ```{norm-cost} SN SSN ``` ````) renders, in a column for each named
normalizer (labels as in the results: ``SN``, ``DN-B``, ...), its extra parameters and multiply-adds against BatchNorm
on ResNet-50 and MobileNetV2 (``norm_cost.json``) and the time of one layer against ``nn.BatchNorm2d``
(``benchmark.json``: float32 training forward+backward, as shipped, at the small-batch shape and at the first
large shape).
"""
from __future__ import annotations

import json
from functools import cache

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

from benchmarks.results_io import RESULTS_DIR as RESULTS


@cache
def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _count(value: float) -> str:
    for limit, suffix, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if abs(value) >= limit:
            return f"{value / limit:.{digits}f}{suffix}"
    return f"{value:.0f}"


def _ratio(label: str, shape: list[int]) -> str:
    for record in _load("benchmark.json")["records"]:
        if (record["layer"], record["impl"], record["dtype"], record["mode"], record["shape"]) == (
                label, "fast", "float32", "train fwd+bwd", shape):
            return f"{record['ratio_bn']:.2f}×"
    return "–"


def _table(header: list[str], rows: list[list[str]]) -> nodes.table:
    table = nodes.table(classes=["colwidths-auto"])
    group = nodes.tgroup(cols=len(header))
    table += group
    group.extend(nodes.colspec(colwidth=1) for _ in header)
    for section, lines in ((nodes.thead(), [header]), (nodes.tbody(), rows)):
        for line in lines:
            row = nodes.row()
            row.extend(nodes.entry("", nodes.paragraph(text=cell)) for cell in line)
            section += row
        group += section
    return table


class NormCost(SphinxDirective):
    """Extra parameters, multiply-adds and layer time of the named normalizers (one column each), from the
    results files."""

    required_arguments = 1
    final_argument_whitespace = True

    def run(self) -> list[nodes.Node]:
        for name in ("norm_cost.json", "benchmark.json"):
            self.env.note_dependency(str(RESULTS / name))
        cost = _load("norm_cost.json")["results"]
        meta = _load("benchmark.json")["meta"]
        labels = self.arguments[0].split()
        unknown = [label for label in labels if label not in cost["ResNet-50"]]
        if unknown:
            raise self.error(f"norm-cost: no measurement of {unknown} in norm_cost.json "
                             f"(labels: {', '.join(cost['ResNet-50'])})")
        rows = []
        for network in ("ResNet-50", "MobileNetV2"):
            for quantity, key in (("parameters", "extra_parameters"), ("multiply-adds", "extra_multiply_adds")):
                rows.append([f"{network}: extra {quantity}"] + [
                    f"{_count(cost[network][label][key])} ({cost[network][label][key + '_pct']:+.3f}%)"
                    for label in labels])
        for shape in (meta["small_shapes"][0], meta["shapes"][0]):
            rows.append([f"one layer at {'×'.join(map(str, shape))}: time × BN"]
                        + [_ratio(label, shape) for label in labels])
        return [_table(["against BatchNorm", *labels], rows)]


def setup(app) -> dict:
    app.add_directive("norm-cost", NormCost)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
