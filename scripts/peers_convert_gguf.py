"""Converts a Hugging Face DeepSeek-V3 checkpoint to GGUF with llama.cpp's own convert_hf_to_gguf.py, for the
llama.cpp peer of `python -m helix bench peer` (scripts/peers.sh runs it in the peers' environment, which has
torch and transformers; the helix environment is not used).

The benchmark checkpoint carries helix's small byte-level BPE tokenizer (helix.tiny_tokenizer: the GPT-2
pre-tokenizer regex, fewer ids than the model's vocabulary, which the converter pads). llama.cpp recognizes a
BPE pre-tokenizer only by the hash of a known model's tokenization and refuses any other, so this wrapper
names it: "gpt-2". The weights are converted unchanged (--outtype bf16).

usage: python scripts/peers_convert_gguf.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf
"""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    llama_dir, model_dir, out = sys.argv[1:4]
    sys.path[:0] = [llama_dir, f"{llama_dir}/gguf-py"]
    import conversion.base as base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", "bf16", "--outfile", out]
    runpy.run_path(f"{llama_dir}/convert_hf_to_gguf.py", run_name="__main__")


if __name__ == "__main__":
    main()
