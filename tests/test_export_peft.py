"""Interop: the PEFT and fused exports load in the real transformers/peft (CPU torch) and
reproduce the MLX logits of base + adapters."""

from __future__ import annotations

import numpy as np
import pytest

import ospo_mlx  # noqa: F401  (BLAS before mlx)
from ospo_mlx.export import ExportArgs, export

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from test_export import TOKENS, make_adapters, make_tiny_llama, mlx_logits  # noqa: E402

pytestmark = pytest.mark.interop
TOL = 1e-3


def hf_logits(model) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.float().numpy()


def load_hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    hf = make_tiny_llama(root / "hf", seed=7)
    return {
        "root": root,
        "hf": hf,
        "gguf": make_tiny_llama(root / "gguf", seed=7, rope_traditional=True),
    }


def test_base_model_agrees_between_mlx_and_transformers(models):
    assert np.abs(hf_logits(load_hf(models["hf"])) - mlx_logits(models["hf"])).max() <= TOL


@pytest.mark.parametrize(
    ("num_layers", "keys"),
    [
        (2, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")),
        (-1, None),
    ],
    ids=["last-2-layers", "all-linears-all-layers"],
)
def test_peft_export_matches_mlx_logits(models, tmp_path, num_layers, keys):
    adapters = make_adapters(models["hf"], tmp_path / "ad", num_layers=num_layers, keys=keys)
    out = tmp_path / "peft"
    export(ExportArgs(out=out, format="peft", adapters=adapters, model=str(models["hf"])))
    model = peft.PeftModel.from_pretrained(load_hf(models["hf"]), str(out))
    expected = mlx_logits(models["hf"], adapters)
    assert np.abs(expected - mlx_logits(models["hf"])).max() > 1e-2  # the adapter matters
    assert np.abs(hf_logits(model) - expected).max() <= TOL


def test_peft_export_from_gguf_form_base_applies_to_hf_checkpoint(models, tmp_path):
    # Adapters trained on the interleaved-RoPE (GGUF) form must work on the HF original.
    adapters = make_adapters(models["gguf"], tmp_path / "ad", num_layers=4)
    out = tmp_path / "peft"
    export(ExportArgs(out=out, format="peft", adapters=adapters, model=str(models["gguf"])))
    model = peft.PeftModel.from_pretrained(load_hf(models["hf"]), str(out))
    assert np.abs(hf_logits(model) - mlx_logits(models["gguf"], adapters)).max() <= TOL


@pytest.mark.parametrize("form", ["hf", "gguf"])
def test_fused_export_loads_in_transformers(models, tmp_path, form):
    adapters = make_adapters(models[form], tmp_path / "ad")
    out = tmp_path / "fused"
    export(ExportArgs(out=out, format="fused", adapters=adapters, model=str(models[form])))
    assert np.abs(hf_logits(load_hf(out)) - mlx_logits(models[form], adapters)).max() <= TOL
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("red shoes")["input_ids"]


@pytest.mark.slow
def test_real_smollm2_gguf_exports_match_in_transformers(tmp_path):
    """The embedded SmolLM2 (GGUF: quantized, interleaved RoPE): fused --dequantize and PEFT
    exports reproduce MLX base + adapters in transformers."""
    from ospo_mlx.models.assets import smollm2_gguf_path
    from ospo_mlx.models.gguf import convert_gguf

    try:
        gguf = smollm2_gguf_path()
    except Exception as exc:  # the embedded model is an optional install
        pytest.skip(str(exc))
    base = convert_gguf(gguf, tmp_path / "smollm2")
    adapters = make_adapters(
        base,
        tmp_path / "ad",
        num_layers=4,
        keys=("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj"),
    )
    expected = mlx_logits(base, adapters)
    export(
        ExportArgs(
            out=tmp_path / "fused",
            format="fused",
            adapters=adapters,
            model=str(base),
            dequantize=True,
        )
    )
    assert np.abs(hf_logits(load_hf(tmp_path / "fused")) - expected).max() <= 5e-3
    # An HF-layout copy of the base (zero adapters), then the PEFT export on top of it.
    zero = tmp_path / "zero"
    zero.mkdir()
    import mlx.core as mx

    ws = mx.load(str(adapters / "adapters.safetensors"))
    mx.save_safetensors(
        str(zero / "adapters.safetensors"), {k: mx.zeros_like(v) for k, v in ws.items()}
    )
    (zero / "adapter_config.json").write_text((adapters / "adapter_config.json").read_text())
    export(
        ExportArgs(
            out=tmp_path / "hfbase", format="fused", adapters=zero, model=str(base), dequantize=True
        )
    )
    export(ExportArgs(out=tmp_path / "peft", format="peft", adapters=adapters, model=str(base)))
    model = peft.PeftModel.from_pretrained(load_hf(tmp_path / "hfbase"), str(tmp_path / "peft"))
    assert np.abs(hf_logits(model) - expected).max() <= 5e-3
