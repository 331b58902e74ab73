#!/usr/bin/env python3
"""Make the prompt-to-latents fixtures: diffusers' FluxPipeline(prompt=...) over the tiny dev transformer, VAE and
scheduler (fixtures/tiny-flux-dev) and the tiny text encoders and tokenizers (fixtures/text).

Run by hand after scripts/make_fixtures.py and scripts/make_text_fixtures.py, in the same venv:

    .venv-fixtures/bin/python scripts/make_prompt_fixtures.py

It writes fixtures/tiny-flux-dev-text/ (a diffusers folder whose parts are relative symlinks to those fixtures)
and fixtures/reference/pipeline_prompt_*.safetensors: the initial latents (unpacked), the prompt embeddings the
pipeline computed, and the final latents (unpacked, before the VAE scaling), with the prompt and settings in the
metadata. Everything runs in float32 on the CPU.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import FluxPipeline, bf16_round, pack, save_tensors  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
FOLDER = os.path.join(ROOT, "tiny-flux-dev-text")
PARTS = {
    "transformer": "../tiny-flux-dev/transformer", "vae": "../tiny-flux-dev/vae", "scheduler": "../tiny-flux-dev/scheduler",
    "text_encoder": "../text/text_encoder", "text_encoder_2": "../text/text_encoder_2",
    "tokenizer": "../text/tokenizer", "tokenizer_2": "../text/tokenizer_2",
}
CASES = [
    # name, prompt, max_sequence_length, height, width, steps, seed
    ("a", "a red kiln at dusk, 35mm photo", 512, 128, 128, 3, 11),
    ("b", "Crème brûlée on a café table — 東京, night; " * 6, 32, 96, 160, 2, 12),
]


def main():
    os.makedirs(FOLDER, exist_ok=True)
    for name, target in PARTS.items():
        link = os.path.join(FOLDER, name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)
    index = {
        "_class_name": "FluxPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(os.path.join(FOLDER, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")

    torch.set_num_threads(1)
    pipe = FluxPipeline.from_pretrained(FOLDER, torch_dtype=torch.float32)
    for name, prompt, max_length, height, width, steps, seed in CASES:
        g = torch.Generator().manual_seed(seed)
        latents = bf16_round(torch.randn(1, 16, height // 8, width // 8, generator=g, dtype=torch.float32))
        with torch.no_grad():
            prompt_embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=max_length)
            packed = pipe(prompt=prompt, latents=pack(latents).clone(), height=height, width=width, num_inference_steps=steps,
                          guidance_scale=3.5, max_sequence_length=max_length, output_type="latent", return_dict=False)[0]
        final = FluxPipeline._unpack_latents(packed, height, width, pipe.vae_scale_factor)
        save_tensors(os.path.join(ROOT, "reference", f"pipeline_prompt_{name}.safetensors"), {
            "latents": latents, "prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled, "final_latents": final,
        }, {"prompt": prompt, "max_sequence_length": max_length, "height": height, "width": width, "steps": steps,
            "guidance": 3.5})
        print(name, tuple(prompt_embeds.shape), tuple(final.shape))


if __name__ == "__main__":
    main()
