"""Write tests/fixtures/encoder_reference.json: reference sentence embeddings from PyTorch.

Runs the Hugging Face transformers BertModel forward (torch, CPU, float32) on the embedded
all-MiniLM-L6-v2 checkpoint, then mean-pools over the attention mask and L2-normalizes, as
sentence-transformers does. The MLX encoder is tested against these vectors (cosine >= 0.9999)
without needing torch. Needs: pip install torch==2.13.0 transformers

    python scripts/make_encoder_fixture.py [--encoder DIR] [--out tests/fixtures/encoder_reference.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SENTENCES = [
    "wireless bluetooth headphones",
    "A man is eating food.",
    "red running shoes for men, size 10, lightweight and breathable mesh upper",
    "usb-c charger 65W GaN fast charging for MacBook Pro / iPad (2 ports)",
    "Ünïcödé café crème brûlée — 100% naïve",
    "",
    "kids winter jacket waterproof with hood " * 30,  # longer than max_length: truncated
]
DECIMALS = 6


def reference_vectors(
    encoder_dir: Path, sentences: list[str], max_length: int
) -> list[list[float]]:
    import torch
    from tokenizers import Tokenizer
    from transformers import BertModel

    model = BertModel.from_pretrained(str(encoder_dir), add_pooling_layer=False).eval()
    tok = Tokenizer.from_file(str(encoder_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    out = []
    with torch.no_grad():
        for text in sentences:  # one at a time: no padding in the reference
            enc = tok.encode(text)
            ids = torch.tensor([enc.ids])
            mask = torch.tensor([enc.attention_mask])
            hidden = model(
                input_ids=ids, attention_mask=mask, token_type_ids=torch.tensor([enc.type_ids])
            )[0]
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out.append([round(float(x), DECIMALS) for x in pooled[0]])
    return out


def main() -> None:
    from ospo_mlx.models.assets import minilm_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--encoder", type=Path, default=None, help="sentence-transformers directory"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "tests/fixtures/encoder_reference.json",
    )
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    encoder_dir = args.encoder or minilm_dir()
    vectors = reference_vectors(encoder_dir, SENTENCES, args.max_length)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "encoder": "all-MiniLM-L6-v2",
        "max_length": args.max_length,
        "sentences": SENTENCES,
        "vectors": vectors,
    }
    args.out.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    print(f"wrote {len(vectors)} vectors of dim {len(vectors[0])} to {args.out}")


if __name__ == "__main__":
    main()
