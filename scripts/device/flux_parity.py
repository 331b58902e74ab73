#!/usr/bin/env python3
"""Full-size parity on the GPU machine: diffusers FLUX.1-dev transformer and VAE with random weights of the real config,
saved in diffusers layout; an FP32 reference step at 1024x1024 recording every block's input and output; diffusers BF16
and Kiln (CUDA, BF16) each run every block on the FP32 reference's input for that block. The bar: Kiln's error on each
block's output at most 1.5x diffusers BF16's on the same block, and the same for the whole step and the VAE decode.
Then FP8: torchao's row-wise dynamic FP8 (every nn.Linear of the transformer) and Kiln --precision fp8 on the same
blocks; the bar there is Kiln FP8's error at most 1.25x torchao FP8's on every block.

    python3 scripts/device/flux_parity.py --kiln .device-flux/kiln --work /tmp/parity --json OUT.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flux_torch import DEV, VAE, build, image_ids  # noqa: E402
from diffusers import AutoencoderKL, FluxTransformer2DModel  # noqa: E402

SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
             "use_dynamic_shifting": True, "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def save_model(folder, transformer, vae):
    """A diffusers FLUX.1-dev folder (transformer, VAE, scheduler, model_index.json) that `kiln` loads."""
    transformer.save_pretrained(os.path.join(folder, "transformer"), max_shard_size="10GB")
    vae.save_pretrained(os.path.join(folder, "vae"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    json.dump(SCHEDULER, open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w"))
    json.dump({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
               "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]},
              open(os.path.join(folder, "model_index.json"), "w"))


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def record_blocks(model, inputs):
    """One forward pass recording each block's inputs and outputs (on the CPU, fp32), named like the fixtures."""
    records, hooks = {}, []

    def hook(prefix):
        def fn(module, args, kwargs, output):
            records[f"{prefix}.img_in"] = kwargs["hidden_states"].float().cpu()
            records[f"{prefix}.txt_in"] = kwargs["encoder_hidden_states"].float().cpu()
            records[f"{prefix}.txt_out"] = output[0].float().cpu()
            records[f"{prefix}.img_out"] = output[1].float().cpu()
        return fn

    for i, block in enumerate(model.transformer_blocks):
        hooks.append(block.register_forward_hook(hook(f"double.{i}"), with_kwargs=True))
    for i, block in enumerate(model.single_transformer_blocks):
        hooks.append(block.register_forward_hook(hook(f"single.{i}"), with_kwargs=True))
    hooks.append(model.time_text_embed.register_forward_hook(lambda m, a, o: records.__setitem__("temb", o.float().cpu())))
    with torch.inference_mode():
        records["output"] = model(**inputs)[0].float().cpu()
    for h in hooks:
        h.remove()
    return records


def blocks_on_reference(model, reference, inputs, dtype):
    """Every block of `model` fed the reference's (fp32) input for that block, in `dtype`; outputs in fp32."""
    out = {}
    with torch.inference_mode():
        temb = model.time_text_embed(inputs["timestep"].to(dtype) * 1000, inputs["guidance"].to(dtype) * 1000,
                                     inputs["pooled_projections"])
        ids = torch.cat((inputs["txt_ids"], inputs["img_ids"]), dim=0)
        rope = model.pos_embed(ids)
        for kind, blocks in (("double", model.transformer_blocks), ("single", model.single_transformer_blocks)):
            for i, block in enumerate(blocks):
                txt, img = block(hidden_states=reference[f"{kind}.{i}.img_in"].cuda().to(dtype),
                                 encoder_hidden_states=reference[f"{kind}.{i}.txt_in"].cuda().to(dtype),
                                 temb=temb, image_rotary_emb=rope)
                out[f"{kind}.{i}.img_out"], out[f"{kind}.{i}.txt_out"] = img.float().cpu(), txt.float().cpu()
        out["output"] = model(**inputs)[0].float().cpu()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kiln", required=True)
    parser.add_argument("--work", default="/tmp/parity")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    folder = os.path.join(args.work, "flux-dev")
    os.makedirs(folder, exist_ok=True)
    timings = {}
    t = time.time()
    g = torch.Generator(device="cuda").manual_seed(1)
    bf = lambda *shape: torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16)

    transformer = build(FluxTransformer2DModel, DEV)
    vae = build(AutoencoderKL, VAE)
    save_model(folder, transformer, vae)
    timings["build_and_save_s"] = time.time() - t

    rows = columns = 64
    inputs = dict(hidden_states=bf(1, rows * columns, 64), encoder_hidden_states=bf(1, 512, 4096), pooled_projections=bf(1, 768),
                  timestep=torch.tensor([0.75], device="cuda"), guidance=torch.tensor([3.5], device="cuda"),
                  img_ids=image_ids(rows, columns), txt_ids=torch.zeros(512, 3, device="cuda"), return_dict=False)
    z = bf(1, 16, 128, 128)

    t = time.time()
    transformer.float()
    fp32_inputs = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inputs.items()}
    reference = record_blocks(transformer, fp32_inputs)
    with torch.inference_mode():
        vae_reference = vae.float().decode(z.float()).sample.float().cpu()
    timings["fp32_reference_s"] = time.time() - t

    t = time.time()
    transformer.to(torch.bfloat16)
    vae.to(torch.bfloat16)
    diffusers_bf16 = blocks_on_reference(transformer, reference, inputs, torch.bfloat16)
    with torch.inference_mode():
        diffusers_bf16["decode_out"] = vae.decode(z).sample.float().cpu()
    timings["diffusers_bf16_s"] = time.time() - t
    t = time.time()
    torchao_fp8, torchao_error = None, None
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
        quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        torchao_fp8 = blocks_on_reference(transformer, reference, inputs, torch.bfloat16)
    except Exception as error:  # report, and still check BF16
        torchao_error = f"{type(error).__name__}: {error}"[:400]
        print(f"torchao FP8 unavailable: {torchao_error}", flush=True)
    timings["torchao_fp8_s"] = time.time() - t
    del transformer, vae
    torch.cuda.empty_cache()

    reference_path = os.path.join(args.work, "reference.safetensors")
    save_file({**reference, **{k: v.float().cpu().contiguous() for k, v in fp32_inputs.items() if torch.is_tensor(v)}},
              reference_path, metadata={"latent_height": str(2 * rows), "latent_width": str(2 * columns)})
    save_file({"decode_in": z.float().cpu()}, os.path.join(args.work, "vae_reference.safetensors"))
    reference["decode_out"] = vae_reference

    kiln = {}
    for precision in ("bf16", "fp8"):
        t = time.time()
        path = os.path.join(args.work, f"kiln-{precision}.safetensors")
        subprocess.run([args.kiln, "parity", "--device", "cuda", "--precision", precision, "--model", folder, "--reference",
                        reference_path, "--vae-reference", os.path.join(args.work, "vae_reference.safetensors"), "--out", path],
                       check=True)
        timings[f"kiln_{precision}_s"] = time.time() - t
        kiln[precision] = load_file(path)

    rows_out, worst, worst_fp8 = [], 0.0, 0.0
    for name in sorted(k for k in diffusers_bf16 if k.endswith("_out") or k == "output"):
        d, k = rel(diffusers_bf16[name], reference[name]), rel(kiln["bf16"][name], reference[name])
        worst = max(worst, k / d)
        row = {"tensor": name, "diffusers_bf16": d, "kiln_bf16": k, "ratio": k / d}
        line = f"{name:24s} diffusers bf16 {d:.4e}  kiln bf16 {k:.4e}  ratio {k / d:.3f}"
        if torchao_fp8 is not None and name in torchao_fp8:
            a, f = rel(torchao_fp8[name], reference[name]), rel(kiln["fp8"][name], reference[name])
            worst_fp8 = max(worst_fp8, f / a)
            row.update(torchao_fp8=a, kiln_fp8=f, fp8_ratio=f / a)
            line += f"  |  torchao fp8 {a:.4e}  kiln fp8 {f:.4e}  ratio {f / a:.3f}"
        rows_out.append(row)
        print(line, flush=True)
    result = {"timings": timings, "worst_ratio": worst, "bar": 1.5, "passed": worst <= 1.5,
              "fp8": {"worst_ratio": worst_fp8 if torchao_fp8 is not None else None, "bar": 1.25,
                      "passed": torchao_fp8 is not None and worst_fp8 <= 1.25, "torchao_error": torchao_error},
              "tensors": rows_out}
    json.dump(result, open(args.json, "w"), indent=1)
    print(f"worst ratio Kiln / diffusers BF16: {worst:.3f} (bar 1.5): {'PASS' if worst <= 1.5 else 'FAIL'}")
    if torchao_fp8 is not None:
        print(f"worst ratio Kiln FP8 / torchao FP8: {worst_fp8:.3f} (bar 1.25): {'PASS' if worst_fp8 <= 1.25 else 'FAIL'}")


if __name__ == "__main__":
    main()
