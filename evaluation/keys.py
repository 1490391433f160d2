"""Can iReVa's keys tell a dataset's in-scope prompts from its out-of-scope ones? Per layer:

    python -m evaluation.keys --dataset counterfact --n 300 --layers 3,8,13,18,23,29

For each record the key is built as IrevaEditor builds it (MLP input of the prompt's last token,
centred on the calibration mean, unit length). Printed per layer and theta: the share of
paraphrases whose own edit's key clears theta (they can fire it) and the share of out-of-scope
probes on which some edit's key clears theta (an edit may fire where it must not). Dev split only.
"""

from __future__ import annotations

import argparse
import json

import torch

from editors.backbone import DEFAULT_MODEL, encode_prompt, load_backbone
from editors.ireva.config import IrevaConfig
from editors.ireva.model import IrevaEditor
from evaluation import datasets, options


def last_keys(editor: IrevaEditor, texts: list[str]) -> torch.Tensor:
    tok = editor.backbone.tokenizer
    return editor.adaptor.normalise(torch.stack([editor.capture(encode_prompt(tok, t)).mlp_inputs[-1] for t in texts]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m evaluation.keys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", choices=datasets.DATASETS, default="counterfact")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--layers", default="3,8,13,18,23,29")
    ap.add_argument("--thetas", default="0.8,0.85,0.9")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(DEFAULT_MODEL, options.server_default("cache_dir"))
    records = datasets.load(args.dataset, "dev", args.n)
    rows = []
    for layer in (int(x) for x in args.layers.split(",")):
        editor = IrevaEditor(backbone, IrevaConfig(layer=layer))
        try:
            prompts = last_keys(editor, [r.prompt for r in records])
            paraphrases = last_keys(editor, [r.paraphrase for r in records])
            probes = last_keys(editor, [r.loc_prompt for r in records])
        finally:
            editor.close()
        own = (prompts * paraphrases).sum(-1)
        nearest = (probes @ prompts.T).max(-1).values
        for theta in (float(x) for x in args.thetas.split(",")):
            rows.append(
                {
                    "layer": layer,
                    "theta": theta,
                    "paraphrase_fires_own": float((own >= theta).float().mean()),
                    "probe_fires_some": float((nearest >= theta).float().mean()),
                }
            )
            print(json.dumps(rows[-1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
