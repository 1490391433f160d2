"""What `editserve eval` writes: DIR/metrics.json (exactly METRIC_KEYS), DIR/report.md (command, code
version, settings, the metrics explained, failure examples), DIR/records.jsonl (per-record detail),
DIR/diagnostics.json (which edit acted, for methods that say), and for sweeps DIR/sweep.json,
DIR/sweep.md and the plot DIR/sweep_<kind>.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.metrics import changed_tokens, exact_match, fmt, token_accuracy
from evaluation.pipeline import Results
from evaluation.wild import Wild

SWEEP_KEYS = ("es", "ps", "locality", "es_gen", "ps_gen", "ns", "rs", "con", "chat_es", "insert_seconds_per_edit")
PLOTTED = (("es", "ES"), ("ps", "PS"), ("ns", "NS"), ("locality", "locality"), ("es_gen", "ES (gen)"))
FAILURES_SHOWN = 10

SEMANTICS = (
    "Semantics: every teacher-forced case is evaluated as its own prefix (an edit acting on the last "
    "position sees each prefix as generation would). A plain causal LM (the unedited model, FT, SERAC's "
    "counterfactual model) gets all prefixes of a pair from one forward pass, which is the same "
    "computation. For iReVa and SERAC the scope model first decides which edit, if any, each query is "
    "about; a query in no edit's scope is the unedited model's, the others are answered by their edit's "
    "method as the server answers them. Generation uses a KV cache exactly as the server does (for an "
    "adaptor below the top layer, a step on which a neuron fired is cached again without the adaptor, as "
    "editors/generation.py does)."
)


def command_line(args) -> list[str]:
    """The `editserve eval` options that reproduce a run (sweep points included)."""
    parts = ["--dataset", args.dataset, "--split", args.split, "--method", args.method]
    if args.n is not None:
        parts += ["--n", str(args.n)]
    if args.retrofit:
        parts.append("--retrofit")
    if args.layer is not None:
        parts += ["--layer", str(args.layer)]
    for item in args.config:
        parts += ["--config", item]
    if args.withdraw_sample is not None:
        parts += ["--withdraw-sample", str(args.withdraw_sample)]
    if args.eval_sample is not None:
        parts += ["--eval-sample", str(args.eval_sample)]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    parts += ["--out", str(args.out)]
    return parts


# -- one run -----------------------------------------------------------------------------------------------
def write(out: Path, r: Results) -> None:
    """Every file of one run."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(r.metrics, indent=2) + "\n")
    write_records(out, r)
    (out / "report.md").write_text("\n".join(report_lines(r)))
    if r.diagnostics:
        (out / "diagnostics.json").write_text(json.dumps(r.diagnostics, indent=2) + "\n")


def write_records(out: Path, r: Results) -> None:
    per_edit = r.withdrawal.get("per_edit", {})
    edited, base = r.edited, r.base
    judged = {k: j for j, k in enumerate(r.wild.judged)} if r.wild is not None else {}
    with (out / "records.jsonl").open("w") as f:
        for k, rec in enumerate(r.records):
            row = {
                "k": k,
                "prompt": rec.prompt,
                "target": rec.target,
                "paraphrase": rec.paraphrase,
                "es_tokens": [p == y for p, y in edited["es"][k]],
                "ps_tokens": [p == y for p, y in edited["ps"][k]],
                "es_pred": r.decode([p for p, _ in edited["es"][k]]),
                "ps_pred": r.decode([p for p, _ in edited["ps"][k]]),
                "loc_changed": changed_tokens(base["locality"][k], edited["locality"][k]),
                "es_gen": r.gen_texts["es"][k],
                "ps_gen": r.gen_texts["ps"][k],
                "es_gen_ok": r.gen_ok["es"][k],
                "ps_gen_ok": r.gen_ok["ps"][k],
            }
            if k in per_edit:
                row["withdrawn_pred"] = r.decode(per_edit[k])
                row["unedited_pred"] = r.decode([p for p, _ in base["es"][k]])
            if k in r.rejected:
                row["rejected"] = r.rejected[k]
            if r.wild is not None and k in judged:
                row.update(_wild_row(r.wild, judged[k]))
            f.write(json.dumps(row) + "\n")


def _wild_row(wild: Wild, j: int) -> dict:
    """The answers in the wild to the j-th judged record."""
    return {
        "chat": wild.chat[j],
        "chat_coherent": wild.chat_ok[j],
        "open": wild.open[j],
        "open_coherent": wild.open_ok[j],
        "yes_to_target": wild.yes[j],
        "no_to_old": wild.no[j],
        "yes_no": wild.yes_no_ok[j],
        "unedited_chat": wild.unedited_chat[j],
        "unrelated": wild.unrelated[j],
        "unrelated_same": wild.unrelated_same[j],
        "distracted": wild.distracted[j],
        "distracted_same": wild.distracted_same[j],
    }


def report_lines(r: Results) -> list[str]:
    return (
        _header(r)
        + _metric_table(r)
        + _notes(r)
        + _withdrawal(r)
        + _diagnostics(r)
        + _failures(r)
        + ["", "```json", json.dumps(r.metrics, indent=2), "```", ""]
    )


def _header(r: Results) -> list[str]:
    args, m = r.args, r.metrics
    sample = f", measured on a sample of {len(r.records)}" if len(r.records) < m["n_edits"] else ""
    return [
        f"# eval: {args.method}{' + retrofit' if args.retrofit else ''} on {args.dataset} ({args.split}), "
        f"{m['n_edits']} edits{sample}",
        "",
        f"- command: `editserve eval {' '.join(command_line(args))}`",
        f"- model: {r.model} (quant {getattr(args, 'quant', None) or 'none'}); code at start: {r.code_version}; "
        f"torch threads: {r.threads}",
        f"- method settings: `{json.dumps(r.description, default=str)}`",
        f"- data: {r.data_root}; NS on {len(r.questions)} NQ questions "
        f"({'efficientqa test' if args.split == 'acceptance' else 'NQ-open dev'})",
        "",
    ]


def _metric_table(r: Results) -> list[str]:
    m, edited, base = r.metrics, r.edited, r.base

    def tokens(x) -> int:
        return sum(len(rec) for rec in x)

    return [
        "| metric | value | what |",
        "|---|---|---|",
        f"| es | {fmt(m['es'])} | {tokens(edited['es'])} target tokens after the prompt, teacher-forced |",
        f"| ps | {fmt(m['ps'])} | {tokens(edited['ps'])} target tokens after the paraphrase |",
        f"| locality | {fmt(m['locality'])} | {tokens(base['locality'])} out-of-scope tokens, prediction unchanged |",
        f"| es_gen | {fmt(m['es_gen'])} | greedy generation from the prompt starts with the target |",
        f"| ps_gen | {fmt(m['ps_gen'])} | same from the paraphrase |",
        f"| ns | {fmt(m['ns'])} | NQ answer tokens right, edits active |",
        f"| rs | {fmt(m['rs'])} | tokens the edit changed that change back when it alone is withdrawn |",
        f"| con | {fmt(m['con'])} | prompt tokens predicted as unedited after withdrawing the edit |",
        f"| chat_es | {fmt(m['chat_es'])} | the prompt asked as a chat turn: the answer contains the target |",
        f"| chat_ps | {fmt(m['chat_ps'])} | the paraphrase asked as a chat turn: the answer contains the target |",
        f"| chat_coherent | {fmt(m['chat_coherent'])} | the prompt as a chat turn, 40 tokens judged whole: the "
        "target stated, the old fact not, no splice |",
        f'| open_mentions | {fmt(m["open_mentions"])} | "Tell me about <subject>.": the answer names the target |',
        f"| open_coherent | {fmt(m['open_coherent'])} | ... and is coherent |",
        f"| yes_no | {fmt(m['yes_no'])} | yes to the new fact and no to the old, both |",
        f"| yes_no_unedited | {fmt(m['yes_no_unedited'])} | the unedited model: yes to the true fact, no to the new |",
        f"| fluency | {fmt(m['fluency'])} | n-gram entropy of the chat and open answers over the unedited model's |",
        f"| fluency_matched | {fmt(m['fluency_matched'])} | the same, unedited answers cut to the edited length |",
        f"| unrelated_same | {fmt(m['unrelated_same'])} | an unrelated chat answer, byte-identical to unedited |",
        f"| distracted_same | {fmt(m['distracted_same'])} | the edit stated, then another question: unedited |",
        f"| same_subject | {fmt(m['same_subject'])} | the subject's other relations: tokens predicted as unedited |",
        f"| neighbourhood | {fmt(m['neighbourhood'])} | same relation, other subjects: tokens predicted as unedited |",
        f"| portability | {fmt(m['portability'])} | answers that follow from the edit, tokens right |",
        f"| subject_aliasing | {fmt(m['subject_aliasing'])} | KnowEdit's probes naming the subject otherwise |",
        f"| n_edits | {m['n_edits']} | |",
        f"| seconds | {fmt(m['seconds'])} | whole run |",
        f"| insert_seconds_per_edit | {fmt(m['insert_seconds_per_edit'])} | |",
        "",
        "Unedited model on the same cases: "
        f"es {fmt(token_accuracy(base['es']))}, ps {fmt(token_accuracy(base['ps']))}, "
        f"ns {fmt(token_accuracy(base['ns']))}.",
        "Exact match (all target tokens right, teacher-forced): "
        f"es {fmt(exact_match(edited['es']))}, ps {fmt(exact_match(edited['ps']))}.",
        "",
        SEMANTICS,
    ]


def _notes(r: Results) -> list[str]:
    lines = []
    if r.rejected:
        lines += ["", f"Refused by the editor ({len(r.rejected)}; evaluated as they are, without an edit):"]
        lines += [
            f"- #{k} {r.records[k].prompt!r} -> {r.records[k].target!r}: {why}"
            for k, why in list(r.rejected.items())[:20]
        ]
    if r.decide_ms is not None:
        lines += ["", f"Scope decision: {r.decide_ms:.1f} ms per query on average."]
    return lines


def _withdrawal(r: Results) -> list[str]:
    w = r.withdrawal
    if not w:
        return []
    lines = [
        "",
        "Withdrawal: each edit withdrawn alone, its prompt's cases predicted, then restored from its own "
        f"tensors. {w['edits']} edits{' (random sample)' if w['sampled'] else ''}, {w['tokens']} tokens, "
        f"{w['changed_tokens']} of them changed by their edit. "
        f"The paper's literal RS (all prompt tokens, changed or not): {fmt(w['rs_all_tokens'])}.",
    ]
    if "batch_noise_mismatches" in w:
        lines += [
            f"Numerical check: per-edit (small batch) predictions differ from the batched ones on "
            f"{w['batch_noise_mismatches']} tokens of {w['batch_noise_sample']} edits."
        ]
    return lines


def _diagnostics(r: Results) -> list[str]:
    d = r.diagnostics
    if not d:
        return []
    lines = ["", "Which edit acted on each case (diagnostics.json):"]
    for name in ("es", "ps"):
        if name in d:
            parts = [
                f"{g}: {v['cases']} cases, accuracy {fmt(v['accuracy'])}" for g, v in d[name].items() if v["cases"]
            ]
            lines.append(f"- {name}: " + "; ".join(parts))
    for name in ("locality", "ns"):
        if name in d:
            x = d[name]
            lines.append(
                f"- {name}: an edit acted on {x['fired']} of {x['cases']} cases; prediction changed on "
                f"{x['changed_where_fired']} of them (and on {x['changed_where_not_fired']} where none did)"
            )
            named = x.get("changed_by_an_edit_of_a_subject_the_probe_names")
            if named:
                lines.append(
                    f"  - {named} of those changes by an edit about a subject the probe names (the set edits it "
                    f"too); unchanged share of the other cases: {fmt(x['unchanged_share_without_those'])}"
                )
    if "same_subject" in d:
        x = d["same_subject"]
        lines.append(
            "- same_subject, by what the probe asks: "
            + "; ".join(
                f"{g.replace('_', ' ')}: {v['probes']} probes, {fmt(v['unchanged'])} unchanged" for g, v in x.items()
            )
        )
    if "withdrawal" in d:
        parts = [
            f"{g}: {v['cases']} cases, {fmt(v['as_unedited'] / v['cases'] if v['cases'] else None)} as unedited"
            for g, v in d["withdrawal"].items()
        ]
        lines.append("- after withdrawing an edit, on its prompt's cases: " + "; ".join(parts))
    return lines


def _failures(r: Results) -> list[str]:
    records, edited, base = r.records, r.edited, r.base

    def wrong(name: str, k: int) -> bool:
        return not all(p == y for p, y in edited[name][k])

    def pred(name: str, k: int, x=edited) -> str:
        return repr(r.decode([p for p, _ in x[name][k]]))

    lines = []
    fails = [k for k in range(len(records)) if wrong("es", k)][:FAILURES_SHOWN]
    if fails:
        lines += ["", "First ES failures (prompt -> target: teacher-forced prediction | generation):"]
        lines += [
            f"- #{k} {records[k].prompt!r} -> {records[k].target!r}: {pred('es', k)} | {r.gen_texts['es'][k]!r}"
            for k in fails
        ]
    fails = [k for k in range(len(records)) if wrong("ps", k)][:FAILURES_SHOWN]
    if fails:
        lines += ["", "First PS failures (paraphrase -> target: teacher-forced prediction):"]
        lines += [f"- #{k} {records[k].paraphrase!r} -> {records[k].target!r}: {pred('ps', k)}" for k in fails]
    fails = [k for k in range(len(records)) if changed_tokens(base["locality"][k], edited["locality"][k])]
    if fails:
        lines += ["", "First locality changes (probe: unedited | edited prediction):"]
        lines += [
            f"- #{k} {records[k].loc_prompt!r}: {pred('locality', k, base)} | {pred('locality', k)}"
            for k in fails[:FAILURES_SHOWN]
        ]
    lines += _wild_failures(r.wild, records)
    for name, asked in (("es", "prompt"), ("ps", "paraphrase")):
        fails = [k for k, ok in enumerate(r.chat_ok.get(name, [])) if not ok][:FAILURES_SHOWN]
        if fails:
            lines += ["", f"First chat_{name} failures ({asked} as a chat turn -> target: the answer):"]
            lines += [
                f"- #{k} {getattr(records[k], asked)!r} -> {records[k].target!r}: {r.chat_texts[name][k]!r}"
                for k in fails
            ]
    for name, what in (
        ("same_subject", "same subject, other relation"),
        ("neighbourhood", "same relation, other subject"),
    ):
        if name not in r.sets:
            continue
        fails = [i for i in range(len(r.probes[name])) if changed_tokens(base[name][i], edited[name][i])]
        if fails:
            lines += ["", f"First {name} changes ({what}; probe [edit]: unedited | edited prediction):"]
            lines += [
                f"- {r.probes[name][i][1].prompt!r} [#{r.probes[name][i][0]} {records[r.probes[name][i][0]].prompt!r}"
                f" -> {records[r.probes[name][i][0]].target!r}]: {pred(name, i, base)} | {pred(name, i)}"
                for i in fails[:FAILURES_SHOWN]
            ]
    return lines


# -- sweeps ------------------------------------------------------------------------------------------------
def _wild_failures(wild: Wild | None, records) -> list[str]:
    if wild is None:
        return []
    lines = []
    for kind, answers, oks in (("chat_coherent", wild.chat, wild.chat_ok), ("open_coherent", wild.open, wild.open_ok)):
        fails = [j for j, ok in enumerate(oks) if not ok][:FAILURES_SHOWN]
        if fails:
            lines += ["", f"First {kind} failures (#record prompt -> target, old fact: the answer):"]
            lines += [
                f"- #{k} {records[k].prompt!r} -> {records[k].target!r}, {records[k].truth!r}: {answers[j]!r}"
                for k, j in ((wild.judged[j], j) for j in fails)
            ]
    fails = [j for j, ok in enumerate(wild.distracted_same) if not ok][:FAILURES_SHOWN]
    if fails:
        lines += ["", "First distracted_same failures (#record -> target: the continuation, changed):"]
        lines += [f"- #{wild.judged[j]} -> {records[wild.judged[j]].target!r}: {wild.distracted[j]!r}" for j in fails]
    fails = [j for j, ok in enumerate(wild.yes_no_ok) if not ok][:FAILURES_SHOWN]
    if fails:
        lines += ["", "First yes_no failures (#record -> target, old fact: to the target | to the old fact):"]
        lines += [
            f"- #{wild.judged[j]} -> {records[wild.judged[j]].target!r}, {records[wild.judged[j]].truth!r}: "
            f"{wild.yes[j]!r} | {wild.no[j]!r}"
            for j in fails
        ]
    return lines


def write_sweep_json(out: Path, args, rows: list[dict]) -> None:
    (out / "sweep.json").write_text(json.dumps(sweep_summary(args, rows), indent=2) + "\n")


def sweep_summary(args, rows: list[dict]) -> dict:
    return {"sweep": args.sweep, "method": args.method, "dataset": args.dataset, "split": args.split, "points": rows}


def write_sweep(out: Path, args, x_name: str, rows: list[dict]) -> None:
    """The plot and sweep.md of a finished sweep."""
    plot_sweep(out, args, x_name, rows)
    lines = [
        f"# sweep over {x_name}: {args.method} on {args.dataset} ({args.split})",
        "",
        f"command: `editserve eval --sweep {args.sweep} " + " ".join(command_line(args)) + "`",
        "",
        "| " + " | ".join([x_name, *SWEEP_KEYS]) + " |",
        "|" + "---|" * (len(SWEEP_KEYS) + 1),
    ]
    for row in rows:
        lines.append("| " + " | ".join([str(row[x_name])] + [fmt(row[k]) for k in SWEEP_KEYS]) + " |")
    lines += ["", f"![sweep](sweep_{args.sweep}.png)", ""]
    (out / "sweep.md").write_text("\n".join(lines))


def plot_sweep(out: Path, args, x_name: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    xs = [row[x_name] for row in rows]
    for key, label in PLOTTED:
        ax.plot(xs, [row[key] for row in rows], marker="o", label=label)
    if x_name == "n":
        ax.set_xscale("log")
        ax.set_xlabel("edits active at once")
    else:
        ax.set_xlabel("adaptor layer" if args.method == "ireva" else "layer")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    n_text = "" if x_name == "n" else f", {rows[0]['n_edits']} edits"
    ax.set_title(f"{args.method} on {args.dataset} ({args.split}{n_text})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"sweep_{args.sweep}.png")
    plt.close(fig)
