"""Development tools of the pack (not imported by ComfyUI)."""
