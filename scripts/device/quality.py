#!/usr/bin/env python3
"""The FP8 quality report on the GPU machine: one FLUX.1-dev model with random weights of the real config, made
well-conditioned (the blocks' output projections scaled by 1/sqrt(2*57), as trained networks keep the residual stream
in range), saved in diffusers layout; fixed noise and prompt embeddings; 28 steps at 1024x1024 through diffusers in FP32
(the reference), diffusers BF16, diffusers BF16 with torchao FP8 row-wise, Kiln BF16 and Kiln FP8. Writes each image's
error against FP32 (`quality.json`) and one grid of the decoded images with |Kiln FP8 - FP32| x 10 (`quality-grid.png`).

    python3 scripts/device/quality.py --kiln .device-flux/kiln --work /tmp/quality --out OUTDIR
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flux_parity import SCHEDULER, save_model  # noqa: E402
from flux_torch import DEV, VAE, build  # noqa: E402
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel  # noqa: E402

SIZE, STEPS, GUIDANCE = 1024, 28, 3.5
OUTPUT_PROJECTIONS = ("attn.to_out.0.weight", "attn.to_add_out.weight", "ff.net.2.weight", "ff_context.net.2.weight")


def condition(transformer):
    scale = (2 * (DEV["num_layers"] + DEV["num_single_layers"])) ** -0.5
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            single_out = name.startswith("single_transformer_blocks.") and name.endswith(".proj_out.weight")
            if single_out or name.endswith(OUTPUT_PROJECTIONS):
                p.mul_(scale)
    return transformer


def run_diffusers(transformer, vae, latents, embeds, pooled):
    scheduler = FlowMatchEulerDiscreteScheduler(**{k: v for k, v in SCHEDULER.items() if not k.startswith("_")})
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=transformer)
    dtype = next(transformer.parameters()).dtype
    packed = FluxPipeline._pack_latents(latents.to(dtype), 1, 16, SIZE // 8, SIZE // 8)
    with torch.inference_mode():
        image = pipe(prompt_embeds=embeds.to(dtype), pooled_prompt_embeds=pooled.to(dtype), latents=packed, height=SIZE, width=SIZE,
                     num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="np").images[0]
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def errors(image, reference):
    a, b = image.astype(np.float64) / 255, reference.astype(np.float64) / 255
    mse = float(np.mean((a - b) ** 2))
    return {"relative_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)), "psnr_db": 10 * math.log10(1 / mse) if mse > 0 else None}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kiln", required=True)
    parser.add_argument("--work", default="/tmp/quality")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    folder = os.path.join(args.work, "flux-dev")
    os.makedirs(folder, exist_ok=True)
    timings, t = {}, time.time()
    torch.manual_seed(0)
    transformer = condition(build(FluxTransformer2DModel, DEV))
    vae = build(AutoencoderKL, VAE)
    save_model(folder, transformer, vae)
    g = torch.Generator(device="cuda").manual_seed(7)
    latents = torch.randn(1, 16, SIZE // 8, SIZE // 8, device="cuda", generator=g)
    embeds = torch.randn(1, 512, 4096, device="cuda", generator=g)
    pooled = torch.randn(1, 768, device="cuda", generator=g)
    inputs = os.path.join(args.work, "inputs.safetensors")
    save_file({"latents": latents.cpu(), "prompt_embeds": embeds.cpu(), "pooled_prompt_embeds": pooled.cpu()}, inputs)
    timings["build_and_save_s"] = time.time() - t

    images = {}
    t = time.time()
    images["diffusers FP32"] = run_diffusers(transformer.float(), vae.float(), latents, embeds, pooled)
    timings["diffusers_fp32_s"] = time.time() - t
    t = time.time()
    images["diffusers BF16"] = run_diffusers(transformer.to(torch.bfloat16), vae.to(torch.bfloat16), latents, embeds, pooled)
    timings["diffusers_bf16_s"] = time.time() - t
    t = time.time()
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
        quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        images["torchao FP8"] = run_diffusers(transformer, vae, latents, embeds, pooled)
    except Exception as error:  # the report still shows Kiln against FP32
        print(f"torchao FP8 unavailable: {type(error).__name__}: {error}"[:400], flush=True)
    timings["torchao_fp8_s"] = time.time() - t
    del transformer, vae
    torch.cuda.empty_cache()

    for precision in ("bf16", "fp8"):
        t = time.time()
        png = os.path.join(args.out, f"quality-kiln-{precision}.png")
        subprocess.run([args.kiln, "generate", "--device", "cuda", "--precision", precision, "--model", folder, "--latents", inputs,
                        "--prompt-embeds", inputs, "--width", str(SIZE), "--height", str(SIZE), "--steps", str(STEPS),
                        "--guidance", str(GUIDANCE), "--out", png], check=True)
        images[f"Kiln {precision.upper()}"] = np.asarray(Image.open(png).convert("RGB"))
        timings[f"kiln_{precision}_s"] = time.time() - t

    reference = images["diffusers FP32"]
    report = {"size": SIZE, "steps": STEPS, "timings": timings,
              "vs_fp32": {name: errors(image, reference) for name, image in images.items() if name != "diffusers FP32"}}
    print(json.dumps(report, indent=1), flush=True)
    json.dump(report, open(os.path.join(args.out, "quality.json"), "w"), indent=1)

    tiles = list(images.items())
    difference = np.clip(np.abs(images["Kiln FP8"].astype(np.int32) - reference.astype(np.int32)) * 10, 0, 255).astype(np.uint8)
    tiles.append(("|Kiln FP8 - FP32| x 10", difference))
    tile, label = SIZE // 2, 28
    grid = Image.new("RGB", (tile * len(tiles), tile + label), "white")
    draw = ImageDraw.Draw(grid)
    for i, (name, image) in enumerate(tiles):
        grid.paste(Image.fromarray(image).resize((tile, tile), Image.BILINEAR), (i * tile, label))
        draw.text((i * tile + 8, 8), name, fill="black")
    grid.save(os.path.join(args.out, "quality-grid.png"))


if __name__ == "__main__":
    main()
