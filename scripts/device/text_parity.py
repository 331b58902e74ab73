#!/usr/bin/env python3
"""CLIP-L and T5-XXL at their real configs (FLUX.1's text_encoder / text_encoder_2) with random weights, against
transformers on the GPU machine: FP32 is the reference, transformers BF16 and Kiln (CUDA; T5 in BF16, the default, and in FP8) are compared to it on
the prompt embeddings FluxPipeline would use (`kiln encode --device cuda`). Kiln reads the saved folders with the committed tiny tokenizers
(fixtures/text: CLIP's real 49408-token BPE; a small T5 unigram model whose ids all lie inside T5's 32128).
Then `kiln bench` runs the whole dev and schnell pipelines at 1024x1024 with these encoders (times, peak device memory).

    python3 scripts/device/text_parity.py --kiln .device-flux/kiln --work /tmp/text --json OUT.json
"""

import argparse
import json
import os
import shutil
import subprocess

import torch
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

CLIP = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
            bos_token_id=0, eos_token_id=2, pad_token_id=1)
T5 = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
          relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dense_act_fn="gelu_new",
          is_gated_act=True, tie_word_embeddings=False)
PROMPT = "a photograph of a red kiln at dusk, embers glowing, 35mm, shallow depth of field"


def build(model_class, config, layers):
    """Random weights that keep activations O(1) through depth, so BF16 rounding is measured rather than chaos: fan-in
    scaling, T5's query folded with 1/sqrt(d_kv) (T5 does not scale its scores), and the projections that feed the
    residual stream scaled by 1/sqrt(2 * layers)."""
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        model = model_class(config)
    torch.set_default_dtype(torch.float32)
    model = model.to_empty(device="cuda")
    residual = (2 * layers) ** -0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name:
                p.normal_(0, 0.1)
            elif "embed" in name:
                p.normal_(0, 1)
            elif p.dim() >= 2:
                std = p.shape[1] ** -0.5
                if name.endswith(".q.weight"):
                    std *= config.d_kv ** -0.5
                if any(part in name for part in (".o.weight", ".wo.weight", "out_proj.weight", "fc2.weight")):
                    std *= residual
                p.normal_(0, std)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1)
        # to_empty leaves buffers uninitialized too: CLIP's position ids must count 0..76 again.
        for name, buffer in model.named_buffers():
            if name.endswith("position_ids"):
                buffer.copy_(torch.arange(buffer.shape[-1], device=buffer.device).expand_as(buffer))
    return model.eval()


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kiln", required=True)
    parser.add_argument("--work", default="/tmp/text")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    folder = args.work
    for part in ("tokenizer", "tokenizer_2"):
        shutil.copytree(os.path.join("fixtures/text", part), os.path.join(folder, part), dirs_exist_ok=True)
    torch.manual_seed(0)
    clip = build(CLIPTextModel, CLIPTextConfig(**CLIP), CLIP["num_hidden_layers"])
    t5 = build(T5EncoderModel, T5Config(**T5), T5["num_layers"])
    clip.save_pretrained(os.path.join(folder, "text_encoder"))
    t5.save_pretrained(os.path.join(folder, "text_encoder_2"), max_shard_size="5GB")

    clip_ids = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))(
        PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.cuda()
    t5_ids = T5TokenizerFast.from_pretrained(os.path.join(folder, "tokenizer_2"))(
        PROMPT, padding="max_length", max_length=512, truncation=True, return_tensors="pt").input_ids.cuda()
    outputs = {}
    with torch.inference_mode():
        for dtype in (torch.bfloat16, torch.float32):
            clip.to(dtype)
            t5.to(dtype)
            clip_out = clip(clip_ids)
            outputs[dtype] = (clip_out.pooler_output.float().cpu(), t5(t5_ids)[0].float().cpu(), clip_out.last_hidden_state.float().cpu())
    del clip, t5
    torch.cuda.empty_cache()

    fp32, bf16 = outputs[torch.float32], outputs[torch.bfloat16]
    result = {"clip_pooled": {"transformers_bf16": rel(bf16[0], fp32[0])}, "t5": {"transformers_bf16": rel(bf16[1], fp32[1])},
              "clip_last_hidden": {"transformers_bf16": rel(bf16[2], fp32[2])}, "kiln_vs_transformers_bf16": {}}
    # Kiln with T5's linear layers in BF16 (the default) and in FP8; CLIP runs in BF16 both times. Four runs: three of
    # another prompt (eager; CLIP's graph captured; T5's captured), then the prompt, both graphs replayed with its
    # tokens: that replay is what is compared. Each run's time is kept.
    result["kiln_encode_run_ms"] = {}
    for precision in ("bf16", "fp8"):
        embeds = os.path.join(folder, f"kiln-embeds-{precision}.safetensors")
        run = subprocess.run([args.kiln, "encode", "--device", "cuda", "--t5-precision", precision, "--text-encoders", folder, "--prompt", PROMPT,
                              "--runs", "4", "--out", embeds], stderr=subprocess.PIPE, text=True)
        print(run.stderr, end="", flush=True)
        run.check_returncode()
        result["kiln_encode_run_ms"][precision] = [float(line.rsplit(": ", 1)[1].split()[0]) for line in run.stderr.splitlines()
                                                   if line.startswith("kiln: encode run")]
        kiln = load_file(embeds)
        result["clip_pooled"][f"kiln_{precision}"] = rel(kiln["pooled_prompt_embeds"], fp32[0])
        result["t5"][f"kiln_{precision}"] = rel(kiln["prompt_embeds"], fp32[1])
        result["clip_last_hidden"][f"kiln_{precision}"] = rel(kiln["clip_last_hidden"], fp32[2])
        result["kiln_vs_transformers_bf16"][precision] = {"clip_pooled": rel(kiln["pooled_prompt_embeds"], bf16[0]),
                                                          "t5": rel(kiln["prompt_embeds"], bf16[1])}
    print(json.dumps(result, indent=1), flush=True)

    # The whole pipelines with these encoders (prompt encoded on every image): dev 28 steps (and its peak device
    # memory), schnell 4 steps at its 256 T5 tokens.
    for variant, steps, key in [("dev", 28, "pipeline_with_text_encoders"), ("schnell", 4, "schnell_pipeline_with_text_encoders")]:
        bench = os.path.join(folder, f"bench-{variant}.json")
        subprocess.run([args.kiln, "bench", "--device", "cuda", "--random-weights", variant, "--text-encoders", folder, "--prompt", PROMPT,
                        "--no-prompt-cache", "--width", "1024", "--height", "1024", "--steps", str(steps), "--runs", "5", "--json", bench],
                       check=True)
        result[key] = json.load(open(bench))
    # The warm text-encoder time with T5 in FP8 (--t5-precision fp8; a short run: one step at 256x256).
    bench = os.path.join(folder, "bench-dev-t5-fp8.json")
    subprocess.run([args.kiln, "bench", "--device", "cuda", "--t5-precision", "fp8", "--random-weights", "dev", "--text-encoders", folder,
                    "--prompt", PROMPT, "--no-prompt-cache", "--width", "256", "--height", "256", "--steps", "1", "--runs", "0",
                    "--json", bench], check=True)
    result["text_encoders_warm_ms_t5_fp8"] = json.load(open(bench))["text_encoders_warm_ms"]
    print(json.dumps({k: result[k]["text_encoders_warm_ms"] for k in ("pipeline_with_text_encoders", "schnell_pipeline_with_text_encoders")}
                     | {"dev, T5 in fp8": result["text_encoders_warm_ms_t5_fp8"]}), flush=True)
    json.dump(result, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
