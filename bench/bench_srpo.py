"""Peak memory of one SRPO step next to one plain LoRA flow-matching step at the same size.

Same DiT weights, same LoRA (rank, targets), same latent size (one 256x256 image = a [16, 1, 32, 32]
latent, 256 tokens, 512 text tokens of width 4096), same precision. The SRPO step also holds a
frozen Wan2.1-architecture VAE (random weights, the released widths) and a frozen CLIP ViT-B/16-size
reward (random weights), and runs: a rollout without gradient (Euler, CFG batched), then per branch
(denoise, inversion) one gradient-carrying DiT forward (conditional only), the VAE decode under
checkpointing, the reward, and that branch's backward before the next branch starts.

Memory is measured as in bench_train.py (CUDA: max_memory_allocated during the step minus the level
at its start; CPU: the allocator's record from torch.profiler), plus the bytes held when the step
starts (weights, adapters, gradients, AdamW state; VAE and reward weights for SRPO). Two more rows
measure SRPO with the VAE decode not checkpointed (what the per-block checkpointing saves) and
checkpointed over 2x2 tiles (the backward then holds one block of one tile at a time).

    PYTHONPATH=. .venv/bin/python bench/bench_srpo.py                 # CPU, ~2 min
    PYTHONPATH=. .venv/bin/python bench/bench_srpo.py --device cuda   # GPU figure
Results: a table on stdout and JSON in bench/results/srpo_<device>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import held_bytes, mib, step_memory  # noqa: E402  (the same measurement as the LoRA benchmark)

from wan_core.models.dit import WanConfig, WanDiT  # noqa: E402
from wan_core.models.vae import VAEConfig, WanVAE  # noqa: E402
from wan_core.rewards.clip import CLIPReward, load_clip_tokenizer  # noqa: E402
from wan_core.rewards.srpo import HeldOut, Prompt, Rollout, SRPOConfig, SRPOTrainer  # noqa: E402
from wan_core.testing.dit import randomize_  # noqa: E402
from wan_core.testing.reward import tiny_bpe, write_tiny_clip_tokenizer  # noqa: E402
from wan_core.testing.vae import randomize_vae_  # noqa: E402
from wan_core.training.flow_matching import TrainConfig, Trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIT = dict(dim=512, num_heads=4, ffn_dim=2048, num_layers=4, text_dim=4096, freq_dim=256, text_len=512,
           in_dim=16, out_dim=16, model_type="t2v")


def held(trainer, frozen=()) -> int:
    """held_bytes of bench_train (weights, trainable, gradients, AdamW state) plus frozen modules."""
    seen = {t.untyped_storage().data_ptr() for t in trainer.model.parameters()}
    extra = sum(t.untyped_storage().nbytes() for m in frozen for t in [*m.parameters(), *m.buffers()]
                if t.untyped_storage().data_ptr() not in seen and not seen.add(t.untyped_storage().data_ptr()))
    return held_bytes(trainer)["total"] + extra


def clip_reward(folder: Path, device) -> CLIPReward:
    from transformers import CLIPConfig, CLIPModel

    vocab = len(tiny_bpe()[0])
    text = dict(vocab_size=vocab, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                max_position_embeddings=77, projection_dim=512, bos_token_id=vocab - 2, eos_token_id=vocab - 1)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16, projection_dim=512)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).eval()
    return CLIPReward(model, load_clip_tokenizer(write_tiny_clip_tokenizer(folder)), "hps_v2.1").to(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, help="bf16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(0)
    base = randomize_(WanDiT(WanConfig(**DIT)), 0).to(device).eval().requires_grad_(False)
    h = args.size // 8
    latent_shape = (16, 1, h, h)
    g = torch.Generator().manual_seed(1)
    context = torch.randn(512, 4096, generator=g)

    # plain LoRA flow-matching step
    class OneLatent:
        items = [{"latent": torch.randn(*latent_shape, generator=g), "context": context}]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return self.items[0]

        def bucket_of(self, i):
            return (args.size, args.size, 1)

    plain_model = copy.deepcopy(base)
    plain = Trainer(plain_model, OneLatent(), TrainConfig(mode="lora", lora_rank=args.rank, lora_alpha=args.rank,
                                                          precision=precision, gradient_checkpointing=True,
                                                          batch_size=1, steps=10))
    plain_model.train()
    plain.train_step()  # optimizer state exists from here on, as in every later step
    plain_held = held(plain)
    plain_peak, _ = step_memory(plain, device)

    # SRPO step
    vae = randomize_vae_(WanVAE(VAEConfig()), 0).to(device).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        reward = clip_reward(Path(tmp), device)
    srpo_model = copy.deepcopy(base)
    config = SRPOConfig(lora_rank=args.rank, lora_alpha=args.rank, precision=precision, width=args.size,
                        height=args.size, rollout_steps=4, guidance=4.0, steps=10, eval_every=0)
    rollout = Rollout(srpo_model, vae, negative=torch.randn(512, 4096, generator=g))
    prompts = [Prompt("a red fox in the snow", context)]
    heldout = HeldOut(prompts, rollout, reward, config)
    srpo = SRPOTrainer(rollout, reward, prompts, config, heldout)
    grad_forwards = []
    srpo_model.register_forward_hook(lambda m, a, o: grad_forwards.append(torch.is_grad_enabled()))
    srpo.train_step()
    assert sum(grad_forwards) == 2, grad_forwards  # one gradient-carrying DiT forward per branch
    srpo_held = held(srpo, [vae, reward])
    srpo_peak, _ = step_memory(srpo, device)
    srpo.decode_checkpointing = False
    nockpt_peak, _ = step_memory(srpo, device)
    srpo.decode_checkpointing, srpo.decode_tile = True, (h // 2, h // 2)
    tiled_peak, _ = step_memory(srpo, device)

    rows = [("plain LoRA flow-matching step", plain_held, plain_peak),
            ("SRPO step (2 branches)", srpo_held, srpo_peak),
            ("SRPO step, VAE decode not checkpointed", srpo_held, nockpt_peak),
            (f"SRPO step, checkpointed, tiles {h // 2}x{h // 2} latent px", srpo_held, tiled_peak)]
    print(f"device {device}, precision {precision}, image {args.size}x{args.size} (latent {latent_shape}), "
          f"LoRA rank {args.rank}, DiT {DIT['dim']}x{DIT['num_layers']} layers")
    print(f"{'step':42s} {'held MiB':>9s} {'transient MiB':>14s} {'peak MiB':>9s} {'peak / plain':>12s}")
    out = {}
    for name, kept, transient in rows:
        peak = kept + transient
        ratio = peak / (plain_held + plain_peak)
        print(f"{name:42s} {mib(kept):9.1f} {mib(transient):14.1f} {mib(peak):9.1f} {ratio:12.2f}")
        out[name] = {"held_mib": mib(kept), "transient_mib": mib(transient), "peak_mib": mib(peak), "ratio": ratio}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"srpo_{device.type}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[args.tag] = {"precision": precision, "size": args.size, "rank": args.rank, "rows": out}
    path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
