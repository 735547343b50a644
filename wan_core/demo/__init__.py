"""The embedded demo (`python -m wan_core demo`): procedural clips of coloured squares (`data`), a
parameter-free stand-in codec with the Wan2.1 latent geometry (`codec`), a hashed word encoder
(`text`), and the run that trains a tiny Wan DiT from scratch and scores its samples (`run`)."""
