"""Image conditioning for image-to-video (docs/conventions.md §10–§12).

  * Wan2.1 I2V / FLF2V and Wan2.2 I2V-A14B: the DiT gets y = [mask (4) | image latent (16)] on its
    channels. The image latent is the VAE encoding of a clip holding the given frame(s) and grey
    (0 in [-1, 1]) everywhere else; the mask marks the given pixel frames, with frame 0 counted four
    times so that latent frame t, channel c covers pixel frame 4(t − 1) + 1 + c. Wan2.1 adds CLIP
    features of the frame(s) (`clip_fea`).
  * Wan2.2 TI2V-5B: the first latent frame is the encoded image itself, kept clean during sampling
    (timestep 0 on its tokens); `first_frame_latent` returns it with a mask (1 = generate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_image(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, 3, h0, w0] -> [N, 3, height, width]: center-crop to the target aspect ratio, then bicubic
    (align_corners False, no antialias) as the official pipeline resizes. When the aspect ratio
    already matches (the official code picks the size from it) there is no crop."""
    h0, w0 = images.shape[-2:]
    if h0 * width != w0 * height:
        if h0 * width > w0 * height:  # too tall
            ch = max(1, round(w0 * height / width))
            top = (h0 - ch) // 2
            images = images[..., top:top + ch, :]
        else:
            cw = max(1, round(h0 * width / height))
            left = (w0 - cw) // 2
            images = images[..., left:left + cw]
    if images.shape[-2:] == (height, width):
        return images.float()
    return F.interpolate(images.float(), size=(height, width), mode="bicubic", align_corners=False)


def frame_mask(frames: int, known: list[int], height: int, width: int) -> torch.Tensor:
    """[4, T, height, width] with 1 where a pixel frame is given, in the official layout
    (frame 0 repeated four times, then four pixel frames per latent frame)."""
    if (frames - 1) % 4:
        raise ValueError(f"frames must be 1 + 4k (1, 5, ..., 81); got {frames}")
    indicator = torch.zeros(frames)
    indicator[known] = 1
    indicator = torch.cat([indicator[:1].repeat(3), indicator])  # 4T entries
    mask = indicator.view(-1, 4).t()  # [4, T]
    return mask[:, :, None, None].expand(4, mask.shape[1], height, width).contiguous()


def conditioning_video(first: torch.Tensor, last: torch.Tensor | None, frames: int) -> torch.Tensor:
    """[1, 3, frames, H, W] in [-1, 1]: the first (and last) frame, grey (0) elsewhere."""
    video = first.new_zeros(1, 3, frames, *first.shape[-2:])
    video[0, :, 0] = first.reshape(3, *first.shape[-2:])
    if last is not None:
        video[0, :, -1] = last.reshape(3, *last.shape[-2:])
    return video


def image_condition(vae, first: torch.Tensor, last: torch.Tensor | None, frames: int, *, callback=None):
    """Wan2.1 I2V/FLF2V and Wan2.2 I2V-A14B: (raw image latent [1, 16, T, h, w], mask [1, 4, T, h, w])
    from frames [1, 3, H, W] in [-1, 1] already at the output size. The mask is 1 on given frames."""
    video = conditioning_video(first, last, frames).to(vae.device, vae.dtype)
    latent = vae.encode(video, normalized=False, callback=callback)
    _, _, _, h, w = latent.shape
    known = [0] if last is None else [0, frames - 1]
    return latent, frame_mask(frames, known, h, w).unsqueeze(0).to(latent)


def concat_y(image_latent_normalized: torch.Tensor, mask_known: torch.Tensor) -> torch.Tensor:
    """The DiT's y: [mask (4, 1 = given) | normalized image latent (16)] on channels."""
    if mask_known.shape[1] == 1:
        mask_known = mask_known.expand(-1, 4, *mask_known.shape[2:])
    return torch.cat([mask_known.to(image_latent_normalized), image_latent_normalized], dim=1)


def first_frame_latent(vae, image: torch.Tensor, frames: int, *, callback=None):
    """Wan2.2 TI2V: (raw latent [1, 48, T, h, w] whose frame 0 is the encoded image and the rest zeros,
    noise mask [1, 1, T, h, w] with 0 on frame 0 = keep, 1 = generate)."""
    if (frames - 1) % 4:
        raise ValueError(f"frames must be 1 + 4k (1, 5, ..., 121); got {frames}")
    z = vae.encode(image.reshape(1, 3, 1, *image.shape[-2:]).to(vae.device, vae.dtype), normalized=False,
                   callback=callback)
    t = (frames - 1) // 4 + 1
    latent = z.new_zeros(1, z.shape[1], t, *z.shape[-2:])
    latent[:, :, :1] = z
    mask = torch.ones(1, 1, t, *z.shape[-2:], device=z.device)
    mask[:, :, 0] = 0
    return latent, mask


def clip_features(clip_vision, first: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
    """CLIP penultimate features of the given frame(s) ([-1, 1], any size): [1, 257, 1280], or
    [1, 514, 1280] for first + last (FLF2V: first then last, along tokens)."""
    images = first if last is None else torch.cat([first, last])
    fea = clip_vision.encode(images)
    return fea.reshape(1, -1, fea.shape[-1])
