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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .shapes import check_vae_video_size

FIRST_FRAME_VAE = "2.2"  # the VAE of the model that keeps the start frame as latent frame 0 (TI2V-5B)


def keeps_start_frame(vae_config) -> bool:
    """True for the Wan2.2 VAE (TI2V-5B: the encoded start frame is latent frame 0); False for the
    Wan2.1 VAE (I2V / FLF2V / Wan2.2 I2V-A14B: y = [mask | image latent])."""
    return vae_config.version == FIRST_FRAME_VAE


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


@dataclass
class ImageToVideoInputs:
    """What a start (and end) frame gives the sampler. With the Wan2.2 VAE (TI2V-5B): `latent`, the raw
    latent to sample whose frame 0 is the encoded image, and `noise_mask` (0 = keep, 1 = generate).
    With the Wan2.1 VAE: `image_latent` (raw) and `known` (1 = given frame), the parts of y."""

    latent: torch.Tensor | None = None
    noise_mask: torch.Tensor | None = None
    image_latent: torch.Tensor | None = None
    known: torch.Tensor | None = None


def image_to_video_inputs(vae, first: torch.Tensor, last: torch.Tensor | None, width: int, height: int,
                          frames: int, *, callback=None) -> ImageToVideoInputs:
    """Start frame `first` (and end frame `last`), [1, 3, H, W] in [-1, 1] at any size -> the sampler's
    inputs for a width x height x frames video: checks the size against the VAE, resizes the frames
    (`resize_image`), then `first_frame_latent` (Wan2.2 VAE) or `image_condition` (Wan2.1 VAE)."""
    check_vae_video_size(vae.config, width, height, frames)
    # the VAE gets the bicubic resize (unclamped, as official)
    first = resize_image(first, height, width)
    last = None if last is None else resize_image(last, height, width)
    if keeps_start_frame(vae.config):
        if last is not None:
            raise ValueError("end_image: TI2V-5B (Wan2.2 VAE) takes a start image only")
        latent, mask = first_frame_latent(vae, first, frames, callback=callback)
        return ImageToVideoInputs(latent=latent, noise_mask=mask)
    image_latent, known = image_condition(vae, first, last, frames, callback=callback)
    return ImageToVideoInputs(image_latent=image_latent, known=known)
