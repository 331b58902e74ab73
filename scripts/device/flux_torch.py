#!/usr/bin/env python3
"""PyTorch eager diffusers on the GPU machine, the yardstick for `kiln bench`: one FLUX.1 transformer step and one VAE
decode per resolution, BF16, random weights of the real shapes (linear/conv weights N(0, 0.02), norm scales 1,
biases 0, as DESIGN.md §5 measured), CUDA events, median after warm-up. Needs diffusers (carried as a wheel).

    python3 scripts/device/flux_torch.py --json OUT.json [--sizes 1024x1024,768x1360,512x512]
"""

import argparse
import json
import statistics

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel

DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
           joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
           block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16, norm_num_groups=32,
           scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)


def random_init(model):
    """Weights in place on the GPU: matrices and kernels N(0, 0.02), norm scales 1, biases 0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.02)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1)
    return model


def build(cls, config):
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        model = cls(**config)
    torch.set_default_dtype(torch.float32)
    return random_init(model.to_empty(device="cuda")).eval()


def timed(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def image_ids(rows, columns):
    ids = torch.zeros(rows, columns, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(columns)[None, :]
    return ids.reshape(rows * columns, 3).cuda()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--sizes", default="1024x1024,768x1360,512x512")
    parser.add_argument("--text-tokens", type=int, default=512)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    g = torch.Generator(device="cuda").manual_seed(0)
    results = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "step_ms": {}, "vae_decode_ms": {}}

    transformer = build(FluxTransformer2DModel, DEV)
    with torch.inference_mode():
        for height, width in sizes:
            rows, columns = height // 16, width // 16
            inputs = dict(
                hidden_states=torch.randn(1, rows * columns, 64, device="cuda", generator=g, dtype=torch.bfloat16),
                encoder_hidden_states=torch.randn(1, args.text_tokens, 4096, device="cuda", generator=g, dtype=torch.bfloat16),
                pooled_projections=torch.randn(1, 768, device="cuda", generator=g, dtype=torch.bfloat16),
                timestep=torch.tensor([0.75], device="cuda"), guidance=torch.tensor([3.5], device="cuda"),
                img_ids=image_ids(rows, columns), txt_ids=torch.zeros(args.text_tokens, 3, device="cuda"), return_dict=False)
            ms = timed(lambda: transformer(**inputs))
            results["step_ms"][f"{height}x{width}"] = ms
            print(f"diffusers eager BF16 step {height}x{width}: {ms:.1f} ms", flush=True)
    del transformer
    torch.cuda.empty_cache()

    vae = build(AutoencoderKL, VAE)
    with torch.inference_mode():
        for height, width in sizes:
            z = torch.randn(1, 16, height // 8, width // 8, device="cuda", generator=g, dtype=torch.bfloat16)
            ms = timed(lambda: vae.decode(z), warmup=2, reps=5)
            results["vae_decode_ms"][f"{height}x{width}"] = ms
            print(f"diffusers eager BF16 VAE decode {height}x{width}: {ms:.1f} ms", flush=True)
    results["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
