"""The OpenVINO CPU backend (T2I_CPU_BACKEND): which models get it, its images against float32 torch,
batches of every size through one converted model, LoRA adapters back in torch, and the converted
models reused from disk by a restart.

The quality bound: the same request's image differs from float32 torch's by at most 2 levels of 255
at any pixel and 0.1 on average (measured on the tiny model: at most 1 level, mean under 0.001; on the
SD-Turbo architecture with TAESD at 512 px see docs/performance.md). Float32 against float32: only the
order of the sums differs (oneDNN's kernels against OpenVINO's), so anything beyond a level or two is a
fault (a wrong graph, a dropped input), which shows as tens of levels."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from t2i_core.common.config import Settings, SettingsError
from t2i_core.common.registry import TINY_SD_ID, Registry
from t2i_core.common.schemas import EngineRequest
from t2i_core.engine import cpu_backend, openvino_backend
from t2i_core.engine.core import Engine

MAX_LEVELS, MEAN_LEVELS = 2, 0.1
INK = "tiny-ink"


def req(seed: int = 1, side: int = 64, **kw) -> EngineRequest:
    base = dict(model=TINY_SD_ID, prompt=f"a lighthouse {seed % 2}", steps=2, guidance_scale=0.0, width=side,
                height=side, seed=seed)
    return EngineRequest(**{**base, **kw})


def pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.frombuffer(result.pixels, np.uint8).reshape(result.height, result.width, 3).astype(np.int16)


def assert_within_bound(a, b) -> None:
    for x, y in zip(a, b):
        diff = np.abs(pixels(x) - pixels(y))
        assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())


def engine(backend: str) -> Engine:
    return Engine(dataclasses.replace(Settings.from_env(), dtype="float32", cpu_backend=backend))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A converted-model cache of this module's own, so the first load really converts."""
    folder = tmp_path_factory.mktemp("openvino-cache")
    patch = pytest.MonkeyPatch()
    patch.setattr(openvino_backend, "cache_root", lambda: folder)
    yield folder
    patch.undo()


@pytest.fixture(scope="module")
def ov(cache) -> Engine:
    return engine("openvino")


@pytest.fixture(scope="module")
def plain() -> Engine:
    return engine("torch")


def ov_modules(eng: Engine) -> dict[str, openvino_backend.OpenVinoModule]:
    pipe = eng.load(TINY_SD_ID).text2image
    return {name: openvino_backend.installed(get(pipe)) for name, get in openvino_backend.COMPONENTS.items()}


def test_the_setting_is_checked():
    assert Settings(cpu_backend="openvino").cpu_backend == "openvino"
    with pytest.raises(SettingsError, match="T2I_CPU_BACKEND must be one of auto, openvino, torch; got 'onnx'"):
        Settings(cpu_backend="onnx")


@pytest.mark.parametrize("setting, device, model, dtype, want", [
    ("auto", "cpu", TINY_SD_ID, torch.float32, "openvino"),
    ("openvino", "cpu", TINY_SD_ID, torch.float32, "openvino"),
    ("torch", "cpu", TINY_SD_ID, torch.float32, "torch"),
    ("auto", "cuda", TINY_SD_ID, torch.float32, "torch"),
    ("auto", "cpu", TINY_SD_ID, torch.bfloat16, "torch"),  # the bfloat16 fast path stays in torch
    ("auto", "cpu", TINY_SD_ID, torch.float64, "torch"),
    ("openvino", "cpu", "builtin/tiny-sdxl", torch.float32, "torch"),  # not wired: kept in torch, not refused
    ("openvino", "cpu", "builtin/tiny-flux", torch.float32, "torch"),
])
def test_auto_picks_openvino_only_where_it_applies(setting, device, model, dtype, want):
    assert cpu_backend.choose(setting, device, Registry().get(model), dtype).backend == want


def test_torch_speed_options_keep_auto_in_torch_and_openvino_drops_only_compile():
    from t2i_core.engine.speedups import Speedups

    entry = Registry().get(TINY_SD_ID)
    for options in (Speedups(compile=True), Speedups(channels_last=True), Speedups(fuse_qkv=True)):
        assert cpu_backend.choose("auto", "cpu", entry, torch.float32, options).backend == "torch"
        assert cpu_backend.choose("openvino", "cpu", entry, torch.float32, options).backend == "openvino"
    both = Speedups(compile=True, channels_last=True)
    assert cpu_backend.speedups_for(both, "openvino") == Speedups(channels_last=True)
    assert cpu_backend.speedups_for(both, "torch") == both


@pytest.mark.slow
def test_openvino_images_match_float32_torch_in_batches_of_any_size(ov, plain):
    modules = ov_modules(ov)
    assert all(m is not None for m in modules.values())
    assert next(r for r in ov.models.states() if r["id"] == TINY_SD_ID)["backend"] == "openvino"
    converted = list(openvino_backend.converted)
    for batch in ([req(1)], [req(2), req(3), req(4)], [req(5, side=96), req(6, side=96)], [req(7), req(8)]):
        unet_calls = modules["unet"].calls
        got = ov.run(batch)
        assert modules["unet"].calls == unet_calls + 2  # one call per step for the whole batch: batched
        assert modules["unet"].last_shape[0] == len(batch)
        assert_within_bound(got, plain.run(batch))
    assert openvino_backend.converted == converted  # a new batch size or side converted nothing


@pytest.mark.slow
def test_an_active_lora_adapter_runs_in_torch_and_the_next_plain_batch_in_openvino(ov, plain):
    unet = ov_modules(ov)["unet"]
    calls = unet.calls
    with_ink = ov.run([req(3, adapters=[(INK, 1.0)])])
    assert unet.calls == calls  # the adapter's weights are in torch only
    assert_within_bound(with_ink, plain.run([req(3, adapters=[(INK, 1.0)])]))
    assert np.abs(pixels(with_ink[0]) - pixels(plain.run([req(3)])[0])).max() > 10  # the adapter did change it
    assert_within_bound(ov.run([req(3)]), plain.run([req(3)]))
    assert unet.calls == calls + 2


@pytest.mark.slow
def test_a_restart_loads_the_converted_models_from_disk(ov, cache):
    before = ov.run([req(11), req(12)])
    files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert {p.suffix for p in files} >= {".xml", ".bin", ".blob"}  # the IR and OpenVINO's compiled blobs
    converted = list(openvino_backend.converted)
    restarted = engine("openvino")
    assert all(m is not None for m in ov_modules(restarted).values())
    assert openvino_backend.converted == converted  # nothing converted again
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files  # nor compiled again
    assert_within_bound(restarted.run([req(11), req(12)]), before)


@pytest.mark.slow
def test_the_sd_turbo_architecture_and_taesd_match_float32_torch():
    """The benchmark's architecture, width-reduced (the same blocks and layer counts) so that it converts in
    seconds: the UNet's noise prediction within 1e-4 relative L2 of torch's, TAESD's full-size decoder's
    output within the bound. (The full-size pipeline: `bench --backends`, docs/performance.md.)"""
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    from t2i_core.weights.random_arch import unet_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**unet_config("sd-turbo"), "block_out_channels": (32, 64, 128, 128),
                                   "attention_head_dim": (2, 4, 8, 8)}).eval()
    decoder = AutoencoderTiny().eval().decoder
    generator = torch.Generator().manual_seed(1)
    latents, text = torch.randn(2, 4, 16, 16, generator=generator), torch.randn(2, 77, 1024, generator=generator)
    with torch.inference_mode():
        reference = unet(latents, torch.tensor(999), text).sample
        image = decoder(latents)
    folder = openvino_backend.cache_root()
    openvino_backend.install_unet(unet, folder / f"unet-test-{openvino_backend.fingerprint(unet)}")
    openvino_backend.install_vae_decoder(decoder, folder / f"vae_decoder-test-{openvino_backend.fingerprint(decoder)}")
    with torch.inference_mode():
        fast = unet(latents, torch.tensor(999), text).sample
        fast_image = decoder(latents)
    assert reference.std() > 0.1
    assert float((fast - reference).norm() / reference.norm()) < 1e-4

    # the random decoder's output sits near -1 (a dark image): compared in levels of 255 (the pixel
    # scale: [-1, 1] -> [0, 255]) before clamping, so that every value counts
    diff = ((fast_image - image).abs() * 127.5).numpy()
    assert image.std() > 0.01 and diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())


def small_vae(act_fn: str = "silu", seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(act_fn=act_fn, block_out_channels=(16,), norm_num_groups=8).eval()


#: the file a complete IR folder is marked with, written last (openvino_ir_cache.MARKER)
MARKER = "complete.json"


def decodes_like_torch(folder, decoders=None) -> None:
    decoder, reference = decoders or (small_vae().decoder, small_vae().decoder)
    openvino_backend.install_vae_decoder(decoder, folder)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert float((decoder(z) - reference(z)).abs().max()) < 1e-4


def test_the_ir_cache_drops_stale_staging_and_reconverts_an_incomplete_or_damaged_folder(tmp_path):
    folder = tmp_path / "vae_decoder-test"
    stale = tmp_path / f".{folder.name}-k1ll3d"  # what a conversion killed part way leaves
    stale.mkdir()
    (stale / "vae_decoder.bin").write_bytes(b"\0" * 100)
    decodes_like_torch(folder)
    assert not stale.exists() and (folder / MARKER).exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [folder.name]

    converted = len(openvino_backend.converted)
    decodes_like_torch(folder)  # complete: reused
    assert len(openvino_backend.converted) == converted

    (folder / MARKER).unlink()  # a folder without its marker is not trusted
    decodes_like_torch(folder)
    assert len(openvino_backend.converted) == converted + 1 and (folder / MARKER).exists()

    binary = folder / "vae_decoder.bin"  # a truncated weights file, its marker in place
    binary.write_bytes(binary.read_bytes()[: binary.stat().st_size // 2])
    decodes_like_torch(folder)
    assert len(openvino_backend.converted) == converted + 2 and (folder / MARKER).exists()


def test_a_cached_ir_that_fails_to_compile_is_converted_again(tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cache_root", lambda: tmp_path)  # no compiled blob of another test
    folder = tmp_path / "vae_decoder-test"
    decodes_like_torch(folder)
    xml = folder / "vae_decoder.xml"  # damaged in place, at its recorded size (the marker cannot tell)
    xml.write_bytes(b"<" * xml.stat().st_size)
    shutil.rmtree(tmp_path / "compiled")  # (OpenVINO's compiled blob would still serve that path and size)
    decodes_like_torch(folder)
    assert (folder / MARKER).exists() and not xml.read_bytes().startswith(b"<<")


def test_two_workers_loading_the_same_model_convert_it_once(tmp_path):
    import threading

    folder = tmp_path / "vae_decoder-test"
    converted = len(openvino_backend.converted)
    errors: list[BaseException] = []

    decoders = [(small_vae().decoder, small_vae().decoder) for _ in range(2)]  # (torch's seed is global)

    def load(pair) -> None:
        try:
            decodes_like_torch(folder, pair)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(pair,)) for pair in decoders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(openvino_backend.converted) == converted + 1


def test_the_cache_key_changes_with_the_config_not_only_the_weights():
    from t2i_core.engine.openvino_ir_cache import cache_key

    silu, gelu, again = small_vae("silu"), small_vae("gelu"), small_vae("silu")
    gelu.load_state_dict(silu.state_dict())
    assert cache_key("vae_decoder", silu.decoder, silu) == cache_key("vae_decoder", again.decoder, again)
    assert cache_key("vae_decoder", silu.decoder, silu) != cache_key("vae_decoder", gelu.decoder, gelu)
    assert cache_key("unet", silu, None) != cache_key("unet", gelu, None)  # the module's own config
