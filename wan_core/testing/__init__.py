"""Test fixtures, never imported at run time: tiny random-weight builders for every model (`dit`,
`vae`, `text_encoder`, `clip_vision`, `reward`), the diffusers reference bridge
(`diffusers_reference`) and the self-check that writes every checkpoint layout and reloads it
(`selfcheck`)."""
