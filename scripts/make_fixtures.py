#!/usr/bin/env python3
"""Make the tiny FLUX.1 fixtures that Kiln's Swift tests compare against.

Run by hand (never by CI), from the repository root, in a venv made from
scripts/fixtures-requirements.txt:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install -r scripts/fixtures-requirements.txt
    .venv-fixtures/bin/python scripts/make_fixtures.py            # writes fixtures/

Everything is deterministic (fixed seeds, one CPU thread) and computed in
float32 on the CPU with diffusers 0.42.1. It writes:

  fixtures/tiny-flux-dev/      diffusers folder (model_index.json, sharded BF16
                               transformer, BF16 VAE, scheduler config)
  fixtures/tiny-flux-schnell/  diffusers folder (F16 transformer, vae -> symlink
                               to ../tiny-flux-dev/vae, scheduler config)
  fixtures/bfl/                the same weights in the BFL single-file layout
                               (flux1-tiny-dev, flux1-tiny-schnell, ae)
  fixtures/reference/          reference inputs/outputs (float32 safetensors)
                               and scheduler.json

Weight init (chosen so that wiring bugs move outputs visibly, see DESIGN.md 5):
Linear/Conv weights ~ N(0, 1/fan_in), norm weights = 1 + N(0, 0.1^2), every
bias ~ N(0, 0.05^2); then every parameter is rounded to bfloat16 (held as
float32), so the float32 models hold exactly the values stored in the files.
Reference inputs are N(0, 1) (or U(-1, 1) for images), likewise rounded to
bf16-representable float32 values, so a BF16 backend sees the same inputs.
"""

import argparse
import copy
import inspect
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.loaders import single_file_utils as sfu
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

EXPECTED_DIFFUSERS = "0.42.1"

DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32,
    num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
    axes_dims_rope=[4, 14, 14],
)
SCHNELL_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=32,
    num_attention_heads=3, joint_attention_dim=48, pooled_projection_dim=24, guidance_embeds=False,
    axes_dims_rope=[4, 14, 14],
)
VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[32, 32, 32, 64], layers_per_block=1, latent_channels=16, norm_num_groups=32,
    act_fn="silu", scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
    use_post_quant_conv=False, mid_block_add_attention=True, sample_size=128,
)
DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
    max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
)
SCHNELL_SCHEDULER = dict(DEV_SCHEDULER, shift=1.0, use_dynamic_shifting=False)

TEXT_TOKENS = 8


# ----------------------------------------------------------------------------- helpers

def bf16_round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float32)


def randn(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return bf16_round(torch.randn(*shape, generator=g, dtype=torch.float32))


def rand_uniform(shape, seed, lo=-1.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return bf16_round(torch.rand(*shape, generator=g, dtype=torch.float32) * (hi - lo) + lo)


NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
try:  # diffusers' own RMSNorm (not used by the Flux modules in 0.42.1, but cheap to accept)
    from diffusers.models.normalization import RMSNorm as DiffusersRMSNorm
    NORM_TYPES = NORM_TYPES + (DiffusersRMSNorm,)
except ImportError:  # pragma: no cover
    pass


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """N(0, 1/fan_in) weights, 1 + N(0, 0.1^2) norm weights, N(0, 0.05^2) biases; then bf16-round."""
    g = torch.Generator().manual_seed(seed)
    done = set()
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                if pname == "weight":
                    fan_in = p[0].numel()  # in_features, or in_ch * kh * kw
                    p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=g)
                elif pname == "bias":
                    p.normal_(0.0, 0.05, generator=g)
                else:
                    raise RuntimeError(f"unexpected parameter {full}")
            elif isinstance(mod, NORM_TYPES):
                if pname == "weight":
                    p.normal_(0.0, 0.1, generator=g).add_(1.0)
                elif pname == "bias":
                    p.normal_(0.0, 0.05, generator=g)
                else:
                    raise RuntimeError(f"unexpected parameter {full}")
            else:
                raise RuntimeError(f"no init rule for {full} ({type(mod).__name__})")
            done.add(full)
    missing = set(n for n, _ in model.named_parameters()) - done
    assert not missing, missing
    for p in model.parameters():
        p.copy_(bf16_round(p))


def state_dict_of(path_or_dir: str) -> dict:
    """Load a safetensors file, or every safetensors shard in a folder, keeping dtypes."""
    if os.path.isdir(path_or_dir):
        sd = {}
        for f in sorted(os.listdir(path_or_dir)):
            if f.endswith(".safetensors"):
                part = load_file(os.path.join(path_or_dir, f))
                assert not (set(part) & set(sd))
                sd.update(part)
        return sd
    return load_file(path_or_dir)


def assert_same_state(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), f"{what}: keys differ: only in first {sorted(set(a) - set(b))[:8]}, only in second {sorted(set(b) - set(a))[:8]}"
    for k in a:
        x, y = a[k], b[k]
        assert x.dtype == y.dtype, f"{what}: {k}: dtype {x.dtype} vs {y.dtype}"
        assert x.shape == y.shape, f"{what}: {k}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        assert torch.equal(x.contiguous().view(torch.uint8) if x.dtype != torch.bool else x,
                           y.contiguous().view(torch.uint8) if y.dtype != torch.bool else y), f"{what}: {k}: values differ"


def assert_model_holds(model: nn.Module, fp32_state: dict, what: str) -> None:
    sd = {k: v.float() for k, v in model.state_dict().items()}
    assert_same_state(sd, fp32_state, what)


def save_tensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write float32 tensors as safetensors with a byte-for-byte reproducible header.

    safetensors' own writer emits __metadata__ in hash-map order, which changes from run to run; this writes the
    same format (8-byte little-endian header length, JSON header padded with spaces to 8 bytes, then the data)
    with sorted keys, so re-running the script gives identical files.
    """
    out = {k: v.detach().to(torch.float32).contiguous() for k, v in sorted(tensors.items())}
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in sorted(metadata.items())}
    for k, v in out.items():
        data = v.numpy().astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    back = load_file(path)
    assert set(back) == set(out) and all(torch.equal(back[k], out[k]) for k in out)


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


# ----------------------------------------------------------------------------- BFL layout

def transformer_to_bfl(sd: dict, num_layers: int, num_single_layers: int, guidance: bool) -> dict:
    """diffusers FluxTransformer2DModel state dict -> black-forest-labs/flux src/flux/model.py key names."""
    out = {}

    def lin(dst, src):
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"]

    def fused(dst, srcs):
        out[f"{dst}.weight"] = torch.cat([sd[f"{s}.weight"] for s in srcs], dim=0)
        out[f"{dst}.bias"] = torch.cat([sd[f"{s}.bias"] for s in srcs], dim=0)

    lin("img_in", "x_embedder")
    lin("txt_in", "context_embedder")
    lin("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    lin("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    lin("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    lin("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if guidance:
        lin("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        lin("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    for i in range(num_layers):
        d, s = f"double_blocks.{i}", f"transformer_blocks.{i}"
        lin(f"{d}.img_mod.lin", f"{s}.norm1.linear")
        lin(f"{d}.txt_mod.lin", f"{s}.norm1_context.linear")
        fused(f"{d}.img_attn.qkv", [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v"])
        fused(f"{d}.txt_attn.qkv", [f"{s}.attn.add_q_proj", f"{s}.attn.add_k_proj", f"{s}.attn.add_v_proj"])
        out[f"{d}.img_attn.norm.query_norm.scale"] = sd[f"{s}.attn.norm_q.weight"]
        out[f"{d}.img_attn.norm.key_norm.scale"] = sd[f"{s}.attn.norm_k.weight"]
        out[f"{d}.txt_attn.norm.query_norm.scale"] = sd[f"{s}.attn.norm_added_q.weight"]
        out[f"{d}.txt_attn.norm.key_norm.scale"] = sd[f"{s}.attn.norm_added_k.weight"]
        lin(f"{d}.img_attn.proj", f"{s}.attn.to_out.0")
        lin(f"{d}.txt_attn.proj", f"{s}.attn.to_add_out")
        lin(f"{d}.img_mlp.0", f"{s}.ff.net.0.proj")
        lin(f"{d}.img_mlp.2", f"{s}.ff.net.2")
        lin(f"{d}.txt_mlp.0", f"{s}.ff_context.net.0.proj")
        lin(f"{d}.txt_mlp.2", f"{s}.ff_context.net.2")
    for i in range(num_single_layers):
        d, s = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        lin(f"{d}.modulation.lin", f"{s}.norm.linear")
        fused(f"{d}.linear1", [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v", f"{s}.proj_mlp"])
        lin(f"{d}.linear2", f"{s}.proj_out")
        out[f"{d}.norm.query_norm.scale"] = sd[f"{s}.attn.norm_q.weight"]
        out[f"{d}.norm.key_norm.scale"] = sd[f"{s}.attn.norm_k.weight"]
    lin("final_layer.linear", "proj_out")
    # diffusers' AdaLayerNormContinuous splits (scale, shift); BFL's final adaLN is (shift, scale).
    for p in ("weight", "bias"):
        scale, shift = sd[f"norm_out.linear.{p}"].chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale], dim=0)
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())
    return {k: v.contiguous() for k, v in out.items()}


def vae_to_bfl(sd: dict, num_blocks: int = 4, layers_per_block: int = 1) -> dict:
    """diffusers AutoencoderKL state dict -> BFL src/flux/modules/autoencoder.py key names."""
    out = {}

    def copy_wb(dst, src):
        for p in ("weight", "bias"):
            if f"{src}.{p}" in sd:
                out[f"{dst}.{p}"] = sd[f"{src}.{p}"]

    def resnet(dst, src):
        for n in ("norm1", "conv1", "norm2", "conv2"):
            copy_wb(f"{dst}.{n}", f"{src}.{n}")
        copy_wb(f"{dst}.nin_shortcut", f"{src}.conv_shortcut")

    def attn(dst, src):
        copy_wb(f"{dst}.norm", f"{src}.group_norm")
        for d, s in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
            w = sd[f"{src}.{s}.weight"]
            out[f"{dst}.{d}.weight"] = w.reshape(w.shape[0], w.shape[1], 1, 1)  # 1x1 conv
            out[f"{dst}.{d}.bias"] = sd[f"{src}.{s}.bias"]

    for part in ("encoder", "decoder"):
        copy_wb(f"{part}.conv_in", f"{part}.conv_in")
        resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0")
        attn(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0")
        resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1")
        copy_wb(f"{part}.norm_out", f"{part}.conv_norm_out")
        copy_wb(f"{part}.conv_out", f"{part}.conv_out")
    for i in range(num_blocks):
        for j in range(layers_per_block):
            resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}")
        copy_wb(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    for i in range(num_blocks):  # BFL decoder.up is indexed by resolution level: up_blocks[i] == up[n-1-i]
        k = num_blocks - 1 - i
        for j in range(layers_per_block + 1):
            resnet(f"decoder.up.{k}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}")
        copy_wb(f"decoder.up.{k}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv")
    assert len(out) == len(sd), (len(out), len(sd))
    return {k: v.contiguous() for k, v in out.items()}


def diffusers_flux_converter(inner_dim: int):
    """diffusers' convert_flux_transformer_checkpoint_to_diffusers with its hard-coded inner_dim = 3072 replaced.

    In 0.42.1 the function splits single_blocks.N.linear1 with a constant inner_dim of 3072 (FLUX.1's), so it cannot
    convert a tiny model as is. We re-create it from its own source with that one constant changed.
    """
    fn = sfu.convert_flux_transformer_checkpoint_to_diffusers
    src = inspect.getsource(fn)
    assert src.count("inner_dim = 3072") == 1, "converter changed: re-check the patch"
    src = src.replace("inner_dim = 3072", f"inner_dim = {inner_dim}")
    ns = dict(vars(sfu))
    exec(compile(src, "<patched convert_flux_transformer_checkpoint_to_diffusers>", "exec"), ns)
    return ns["convert_flux_transformer_checkpoint_to_diffusers"]


def verify_bfl_transformer(bfl_path: str, diffusers_dir: str, inner_dim: int) -> None:
    bfl = state_dict_of(bfl_path)
    ref = state_dict_of(diffusers_dir)
    ckpt = dict(bfl)
    converted = diffusers_flux_converter(inner_dim)(ckpt)
    assert not ckpt, f"keys the converter did not consume: {sorted(ckpt)}"
    assert_same_state(converted, ref, f"BFL {bfl_path} -> diffusers")
    print(f"  verified {bfl_path}: {len(bfl)} tensors convert back to {diffusers_dir} bitwise")


def verify_bfl_vae(bfl_path: str, diffusers_dir: str, config: dict) -> None:
    bfl = state_dict_of(bfl_path)
    ref = state_dict_of(diffusers_dir)
    assert len(bfl) == len(ref)
    converted = sfu.convert_ldm_vae_checkpoint(dict(bfl), dict(config))
    converted = {k: v.contiguous() for k, v in converted.items()}
    assert_same_state(converted, ref, f"BFL {bfl_path} -> diffusers")
    print(f"  verified {bfl_path}: {len(bfl)} tensors convert back to {diffusers_dir} bitwise")


# ----------------------------------------------------------------------------- references

def capture_transformer(model: FluxTransformer2DModel, inputs: dict) -> dict:
    rec = {}
    hooks = []

    def block_hook(prefix):
        def hook(mod, args, kwargs, output):
            assert not args, f"{prefix}: blocks are expected to be called with keyword arguments only"
            # diffusers 0.42.1: both block kinds take (hidden_states, encoder_hidden_states, temb, image_rotary_emb)
            # and return (encoder_hidden_states, hidden_states); single blocks concatenate [txt, img] inside.
            rec[f"{prefix}.img_in"] = kwargs["hidden_states"].clone()
            rec[f"{prefix}.txt_in"] = kwargs["encoder_hidden_states"].clone()
            rec[f"{prefix}.txt_out"] = output[0].clone()
            rec[f"{prefix}.img_out"] = output[1].clone()
            if "temb" in rec:
                assert torch.equal(kwargs["temb"], rec["temb"])
        return hook

    def temb_hook(mod, args, output):
        rec["temb"] = output.clone()

    def rope_hook(mod, args, output):
        cos, sin = output
        rec["rope_cos"], rec["rope_sin"] = cos.float().clone(), sin.float().clone()

    hooks.append(model.time_text_embed.register_forward_hook(temb_hook))
    hooks.append(model.pos_embed.register_forward_hook(rope_hook))
    for i, b in enumerate(model.transformer_blocks):
        hooks.append(b.register_forward_hook(block_hook(f"double.{i}"), with_kwargs=True))
    for i, b in enumerate(model.single_transformer_blocks):
        hooks.append(b.register_forward_hook(block_hook(f"single.{i}"), with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(**inputs, return_dict=False)[0]
    finally:
        for h in hooks:
            h.remove()
    rec["output"] = out.clone()
    return rec


def transformer_reference(model, cfg, lat_h, lat_w, seed, path):
    n = (lat_h // 2) * (lat_w // 2)
    inputs = {
        "hidden_states": randn((1, n, cfg["in_channels"]), seed + 1),
        "encoder_hidden_states": randn((1, TEXT_TOKENS, cfg["joint_attention_dim"]), seed + 2),
        "pooled_projections": randn((1, cfg["pooled_projection_dim"]), seed + 3),
        "timestep": torch.tensor([0.75], dtype=torch.float32),
        "img_ids": FluxPipeline._prepare_latent_image_ids(1, lat_h // 2, lat_w // 2, "cpu", torch.float32),
        "txt_ids": torch.zeros(TEXT_TOKENS, 3, dtype=torch.float32),
    }
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.tensor([3.5], dtype=torch.float32)
    rec = capture_transformer(model, inputs)
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    assert rec["temb"].shape == (1, hidden)
    assert rec["rope_cos"].shape == (TEXT_TOKENS + n, cfg["attention_head_dim"])
    assert rec["output"].shape == (1, n, cfg["in_channels"])
    tensors = dict(inputs)
    tensors.update(rec)
    save_tensors(path, tensors, {
        "latent_height": lat_h, "latent_width": lat_w, "image_tokens": n, "text_tokens": TEXT_TOKENS,
        "timestep": 0.75, "guidance": 3.5 if cfg["guidance_embeds"] else "none",
        "diffusers": diffusers.__version__,
    })


def vae_reference(vae, path):
    decode_in = randn((1, 16, 12, 20), 3001)
    encode_in = rand_uniform((1, 3, 96, 160), 3002)
    with torch.no_grad():
        decode_out = vae.decode(decode_in).sample
        dist = vae.encode(encode_in).latent_dist
    save_tensors(path, {
        "decode_in": decode_in, "decode_out": decode_out, "encode_in": encode_in,
        "encode_mean": dist.mean, "encode_logvar": dist.logvar,
    }, {"note": "encode_logvar is latent_dist.logvar (diffusers clamps it to [-30, 20])",
        "diffusers": diffusers.__version__})


def scheduler_reference(path):
    entries = []
    for name, cfg in (("dev", DEV_SCHEDULER), ("schnell", SCHNELL_SCHEDULER)):
        sched = FlowMatchEulerDiscreteScheduler(**cfg)
        for steps in (1, 4, 28, 50):
            for seq in (64, 256, 1024, 4096, 6000):
                # exactly what FluxPipeline.__call__ does
                sigmas = np.linspace(1.0, 1 / steps, steps)
                mu = calculate_shift(
                    seq,
                    sched.config.get("base_image_seq_len", 256),
                    sched.config.get("max_image_seq_len", 4096),
                    sched.config.get("base_shift", 0.5),
                    sched.config.get("max_shift", 1.15),
                )
                timesteps, n = retrieve_timesteps(sched, steps, "cpu", sigmas=sigmas, mu=mu)
                assert n == steps
                entries.append({
                    "config": name, "steps": steps, "image_seq_len": seq, "mu": float(mu),
                    "timesteps": [float(t) for t in timesteps.tolist()],
                    "sigmas": [float(s) for s in sched.sigmas.tolist()],
                })
    doc = {
        "diffusers": diffusers.__version__,
        "note": "timesteps/sigmas are the scheduler's float32 values written as doubles; sigmas end with the final 0. "
                "mu is computed for schnell too but ignored there (use_dynamic_shifting false).",
        "configs": {"dev": DEV_SCHEDULER, "schnell": SCHNELL_SCHEDULER},
        "cases": entries,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def pipeline_reference(pipe, cfg, name, height, width, steps, guidance, seed, path):
    lat_h, lat_w = height // 8, width // 8
    g = torch.Generator().manual_seed(seed)
    latents = bf16_round(torch.randn(1, 16, lat_h, lat_w, generator=g, dtype=torch.float32))
    prompt_embeds = randn((1, TEXT_TOKENS, cfg["joint_attention_dim"]), seed + 1)
    pooled = randn((1, cfg["pooled_projection_dim"]), seed + 2)
    common = dict(
        prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, height=height, width=width,
        num_inference_steps=steps, guidance_scale=guidance, return_dict=False,
    )
    with torch.no_grad():
        packed_final = pipe(latents=pack(latents).clone(), output_type="latent", **common)[0]
        image = pipe(latents=pack(latents).clone(), output_type="pt", **common)[0]
        final = FluxPipeline._unpack_latents(packed_final, height, width, pipe.vae_scale_factor)
        # consistency check: decoding the saved final latents the way the pipeline does gives the saved image
        dec = pipe.vae.decode(final / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
        again = pipe.image_processor.postprocess(dec, output_type="pt")
    assert torch.equal(again, image), (again - image).abs().max()
    assert final.shape == latents.shape and image.shape == (1, 3, height, width)
    assert image.min() >= 0 and image.max() <= 1
    save_tensors(path, {
        "latents": latents, "prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled,
        "final_latents": final, "image": image,
    }, {"model": name, "steps": steps, "guidance": guidance if cfg["guidance_embeds"] else "ignored",
        "guidance_scale_passed": guidance, "height": height, "width": width,
        "diffusers": diffusers.__version__})


# ----------------------------------------------------------------------------- main

def make_transformer(cfg, seed):
    m = FluxTransformer2DModel(**cfg).to(torch.float32).eval()
    init_weights(m, seed)
    return m


def save_transformer(model, out_dir, dtype, max_shard_size=None):
    saved = copy.deepcopy(model).to(dtype)
    kw = {"safe_serialization": True}
    if max_shard_size is not None:
        kw["max_shard_size"] = max_shard_size
    saved.save_pretrained(out_dir, **kw)


def f16_exact_or_flush(model: nn.Module) -> int:
    """Make every parameter exactly representable in F16 as well as BF16; returns how many values changed.

    A bf16 value survives F16 unless |x| < 2^-17 (below F16's subnormal resolution for 8 significant bits) or is too
    large (|x| > 65504, not the case here). The few such tiny values are flushed to 0.
    """
    changed = 0
    with torch.no_grad():
        for p in model.parameters():
            back = p.to(torch.float16).to(torch.float32)
            bad = back != p
            if bad.any():
                assert p[bad].abs().max() < 2.0 ** -14, "an F16 mismatch that is not a tiny value"
                changed += int(bad.sum())
                p[bad] = 0.0
            assert torch.equal(p.to(torch.float16).to(torch.float32), p)
            assert torch.equal(p.to(torch.bfloat16).to(torch.float32), p)
    return changed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)

    if diffusers.__version__ != EXPECTED_DIFFUSERS:
        sys.exit(f"diffusers {EXPECTED_DIFFUSERS} required, found {diffusers.__version__}")
    torch.set_num_threads(1)
    torch.manual_seed(0)

    dev_dir = os.path.join(out, "tiny-flux-dev")
    schnell_dir = os.path.join(out, "tiny-flux-schnell")
    bfl_dir = os.path.join(out, "bfl")
    ref_dir = os.path.join(out, "reference")
    for d in (dev_dir, schnell_dir, bfl_dir, ref_dir):
        if os.path.islink(d) or os.path.isfile(d):
            os.remove(d)
        elif os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)

    # ---- models
    print("building models")
    dev_t = make_transformer(DEV_TRANSFORMER, 1001)
    schnell_t = make_transformer(SCHNELL_TRANSFORMER, 1002)
    flushed = f16_exact_or_flush(schnell_t)
    print(f"  schnell: {flushed} tiny values (|x| < 2^-17) flushed to 0 so the weights are exact in F16")
    vae = AutoencoderKL(**VAE).to(torch.float32).eval()
    init_weights(vae, 1003)

    dev_fp32 = {k: v.clone() for k, v in dev_t.state_dict().items()}
    schnell_fp32 = {k: v.clone() for k, v in schnell_t.state_dict().items()}
    vae_fp32 = {k: v.clone() for k, v in vae.state_dict().items()}

    # ---- diffusers folders
    print("writing diffusers folders")
    dev_bytes = sum(v.numel() * 2 for v in dev_fp32.values())
    shard = dev_bytes // 2 + 4096  # ~half of the BF16 weights: 2-3 shards
    save_transformer(dev_t, os.path.join(dev_dir, "transformer"), torch.bfloat16, max_shard_size=shard)
    shards = [f for f in os.listdir(os.path.join(dev_dir, "transformer")) if f.endswith(".safetensors")]
    assert 2 <= len(shards) <= 3, shards
    assert os.path.isfile(os.path.join(dev_dir, "transformer", "diffusion_pytorch_model.safetensors.index.json"))
    copy.deepcopy(vae).to(torch.bfloat16).save_pretrained(os.path.join(dev_dir, "vae"), safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(**DEV_SCHEDULER).save_pretrained(os.path.join(dev_dir, "scheduler"))

    save_transformer(schnell_t, os.path.join(schnell_dir, "transformer"), torch.float16)
    os.symlink(os.path.join("..", "tiny-flux-dev", "vae"), os.path.join(schnell_dir, "vae"))
    FlowMatchEulerDiscreteScheduler(**SCHNELL_SCHEDULER).save_pretrained(os.path.join(schnell_dir, "scheduler"))

    # model_index.json exactly as FluxPipeline.save_pretrained writes it (with the text encoders absent -> null)
    with tempfile.TemporaryDirectory() as tmp:
        FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**DEV_SCHEDULER), vae=vae, transformer=dev_t,
            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        ).save_config(tmp)
        with open(os.path.join(tmp, "model_index.json")) as f:
            model_index = json.load(f)
    for d in (dev_dir, schnell_dir):
        with open(os.path.join(d, "model_index.json"), "w") as f:
            json.dump(model_index, f, indent=2, sort_keys=True)
            f.write("\n")

    # ---- BFL single files
    print("writing BFL single files")
    dev_sd = state_dict_of(os.path.join(dev_dir, "transformer"))
    schnell_sd = state_dict_of(os.path.join(schnell_dir, "transformer"))
    vae_sd = state_dict_of(os.path.join(dev_dir, "vae"))
    assert all(v.dtype == torch.bfloat16 for v in dev_sd.values())
    assert all(v.dtype == torch.float16 for v in schnell_sd.values())
    assert all(v.dtype == torch.bfloat16 for v in vae_sd.values())
    save_file(transformer_to_bfl(dev_sd, 2, 2, True), os.path.join(bfl_dir, "flux1-tiny-dev.safetensors"),
              metadata={"format": "pt"})
    save_file(transformer_to_bfl(schnell_sd, 1, 1, False), os.path.join(bfl_dir, "flux1-tiny-schnell.safetensors"),
              metadata={"format": "pt"})
    save_file(vae_to_bfl(vae_sd), os.path.join(bfl_dir, "ae.safetensors"), metadata={"format": "pt"})
    verify_bfl_transformer(os.path.join(bfl_dir, "flux1-tiny-dev.safetensors"), os.path.join(dev_dir, "transformer"), 64)
    verify_bfl_transformer(os.path.join(bfl_dir, "flux1-tiny-schnell.safetensors"),
                           os.path.join(schnell_dir, "transformer"), 96)
    verify_bfl_vae(os.path.join(bfl_dir, "ae.safetensors"), os.path.join(dev_dir, "vae"), VAE)

    # ---- reload through diffusers (checks the folders, shards and the vae symlink) and compute with those models
    print("reloading through diffusers")
    pipes = {}
    for name, d, ref_sd in (("dev", dev_dir, dev_fp32), ("schnell", schnell_dir, schnell_fp32)):
        # model_index.json has the text encoders as [null, null]; from_pretrained still insists on being handed
        # every component, so the absent ones (and the optional IP-adapter ones) are passed as None here.
        pipe = FluxPipeline.from_pretrained(
            d, dtype=torch.float32, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
            image_encoder=None, feature_extractor=None,
        )
        assert pipe.text_encoder is None and pipe.tokenizer is None and pipe.text_encoder_2 is None
        pipe.set_progress_bar_config(disable=True)
        pipe.transformer.eval()
        pipe.vae.eval()
        assert_model_holds(pipe.transformer, ref_sd, f"{name} transformer reloaded")
        assert_model_holds(pipe.vae, vae_fp32, f"{name} vae reloaded")
        assert all(p.dtype == torch.float32 for p in pipe.transformer.parameters())
        assert all(p.dtype == torch.float32 for p in pipe.vae.parameters())
        pipes[name] = pipe
    assert os.path.realpath(os.path.join(schnell_dir, "vae")) == os.path.realpath(os.path.join(dev_dir, "vae"))

    # ---- references
    print("computing references")
    transformer_reference(pipes["dev"].transformer, DEV_TRANSFORMER, 12, 20, 2000,
                          os.path.join(ref_dir, "transformer_dev.safetensors"))
    transformer_reference(pipes["schnell"].transformer, SCHNELL_TRANSFORMER, 16, 16, 2100,
                          os.path.join(ref_dir, "transformer_schnell.safetensors"))
    vae_reference(pipes["dev"].vae, os.path.join(ref_dir, "vae.safetensors"))
    scheduler_reference(os.path.join(ref_dir, "scheduler.json"))
    seed = 4000
    for name, cfg, steps in (("dev", DEV_TRANSFORMER, 4), ("schnell", SCHNELL_TRANSFORMER, 2)):
        for h, w in ((128, 128), (96, 160)):
            pipeline_reference(pipes[name], cfg, name, h, w, steps, 3.5, seed,
                               os.path.join(ref_dir, f"pipeline_{name}_{h}x{w}.safetensors"))
            seed += 10

    # ---- listing
    print("\nfixtures:")
    total = 0
    for root, dirs, files in os.walk(out):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            rel = os.path.relpath(p, out)
            size = os.path.getsize(p)
            total += size
            print(f"  {rel}  ({size} bytes)")
            if f.endswith(".safetensors") and os.path.dirname(rel) == "reference":
                with safe_open(p, "pt") as sf:
                    for k in sf.keys():
                        sl = sf.get_slice(k)
                        print(f"      {k}: {sl.get_dtype()} {sl.get_shape()}")
    print(f"total {total} bytes (symlinked files counted once)")


if __name__ == "__main__":
    main()
