"""The README's main job keeps working and keeps reporting honest figures."""
import json

from wan_core.testing.selfcheck import KINDS, run_selfcheck


def test_selfcheck_passes_and_reports_every_layout(tmp_path, capsys):
    assert run_selfcheck(str(tmp_path)) == 0
    rows = json.loads((tmp_path / "selfcheck.json").read_text())
    layouts = {r["layout"] for r in rows}
    assert {"official", "official sharded", "comfyui fp8_scaled prefixed", "diffusers", "official, bf16 compute"} <= layouts
    assert {r["variant"] for r in rows} == set(KINDS) | {"vae2.1", "vae2.2"}
    assert {r["layout"] for r in rows if r["variant"] == "vae2.2"} == {"official .pth", "comfyui safetensors", "diffusers"}
    assert all(r["vs_diffusers"] <= 1e-4 for r in rows if "vs_diffusers" in r)
    assert "56 of 56 checks within tolerance" in capsys.readouterr().out
