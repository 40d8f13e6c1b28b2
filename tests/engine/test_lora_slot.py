"""The LoRA slot of compiled models (engine/lora_slot.py), checked without compiling: swapping an
adapter set into the slot gives the images PEFT gives with those adapters active."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.errors import InvalidRequest, ModelUnavailable
from t2i_core.common.registry import TINY_SD_ID
from t2i_core.common.schemas import EngineRequest
from t2i_core.engine.core import Engine
from t2i_core.engine.lora_slot import SLOT, CompiledAdapterSlots

INK, PASTEL = "tiny-ink", "tiny-pastel"
SETS = [[], [(INK, 1.0)], [(INK, 1.0), (PASTEL, 0.5)], [(PASTEL, 0.8)], [(PASTEL, 0.3), (INK, -0.7)], []]


def images(engine: Engine, adapters) -> np.ndarray:
    reqs = [EngineRequest(model=TINY_SD_ID, prompt=f"p{i}", steps=2, guidance_scale=3.0, width=64, height=64, seed=i,
                          adapters=adapters) for i in range(2)]
    results = engine.run(reqs)
    assert all(r.error is None for r in results), results[0].error
    return np.stack([np.frombuffer(r.pixels, np.uint8).astype(int) for r in results])


@pytest.fixture(scope="module")
def slotted() -> Engine:
    """An engine whose tiny-sd takes its adapters through the slot (as a compiled one would, uncompiled)."""
    engine = Engine(Settings(dtype="float64"))
    model = engine.load(TINY_SD_ID)
    usable = [a for a in engine.registry.adapters() if a.family == "sd"]
    model.adapters = CompiledAdapterSlots.prepare(model.text2image, [(a.id, a.local_path(), a.weight_name) for a in usable])
    return engine


def test_swapping_sets_into_the_slot_gives_the_images_peft_gives(slotted):
    plain = Engine(Settings(dtype="float64"))
    for adapters in SETS:
        # float64: only the order of the sums differs (one slot matmul against one per adapter)
        assert np.abs(images(slotted, adapters) - images(plain, adapters)).max() <= 1, adapters
    assert not np.array_equal(images(slotted, [(INK, 1.0)]), images(slotted, []))


def test_the_slot_is_one_fixed_adapter_whatever_the_set(slotted):
    slots = slotted.load(TINY_SD_ID).adapters
    assert slots.rank == 8  # the two rank-4 adapters of the family, together
    layers = list(slots._slot.values())
    assert layers and all(list(layer.lora_A) == [SLOT] and layer.active_adapters == [SLOT] for layer in layers)
    images(slotted, [(INK, 1.0), (PASTEL, 0.5)])
    assert all(list(layer.lora_A) == [SLOT] and layer.active_adapters == [SLOT] and layer.scaling[SLOT] == 1.0
               for layer in layers)
    assert slotted.models.adapter_switches()["adapter_switches"] >= 1


def test_a_set_over_the_slots_rank_is_a_400_and_unread_adapters_are_refused(slotted):
    slots = slotted.load(TINY_SD_ID).adapters
    pipe = slotted.load(TINY_SD_ID).text2image
    narrow = CompiledAdapterSlots(loaded=dict(slots.loaded), rank=4, harvested=slots.harvested, _slot=slots._slot)
    with pytest.raises(InvalidRequest) as info:
        narrow.activate(pipe, [(INK, 1.0), (PASTEL, 1.0)])
    assert info.value.param == "adapters" and "rank 8" in info.value.message and "rank 4" in info.value.message
    with pytest.raises(ModelUnavailable, match="T2I_COMPILE=1"):
        slots.load(pipe, "tiny-xl-ink", "/nowhere", None)
    assert not slots.evictable and slots.bytes() > 0


def test_an_adapter_that_does_not_fit_the_model_is_left_out_without_a_trace():
    """A registered adapter of the family made for another size of model (here the tiny SDXL's, onto the
    tiny SD) is listed as missing; the model keeps no layer of it and makes the images it made before."""
    from peft.tuners.lora import LoraLayer

    engine = Engine(Settings(dtype="float64"))
    before = images(engine, [])
    model = engine.load(TINY_SD_ID)
    registry = engine.registry
    known = {a.id: a for a in registry.adapters()}
    misfit, ink = known["tiny-xl-ink"], known[INK]
    slots = CompiledAdapterSlots.prepare(model.text2image, [(misfit.id, misfit.local_path(), misfit.weight_name),
                                                            (ink.id, ink.local_path(), ink.weight_name)])
    model.adapters = slots
    assert set(slots.missing) == {"tiny-xl-ink"} and set(slots.harvested) == {INK}
    names = {name for m in model.text2image.unet.modules() if isinstance(m, LoraLayer) for name in m.lora_A}
    assert names == {SLOT}, names
    assert np.array_equal(images(engine, []), before)


def test_an_adapter_a_compiled_model_cannot_take_unloads_nothing_before_it_is_refused():
    """The memory budget is full: an adapter the slot refuses must not evict other models first."""
    engine = Engine(Settings(dtype="float64"))
    engine.load("builtin/tiny-sdxl")
    model = engine.load(TINY_SD_ID)
    ink = next(a for a in engine.registry.adapters() if a.id == INK)
    model.adapters = CompiledAdapterSlots.prepare(model.text2image, [(ink.id, ink.local_path(), ink.weight_name)])
    engine.models.budget_bytes = engine.models.used_bytes()  # any more bytes would unload the tiny SDXL
    (result,) = engine.run([EngineRequest(model=TINY_SD_ID, prompt="p", steps=2, guidance_scale=3.0, width=64,
                                          height=64, seed=1, adapters=[(PASTEL, 1.0)])])
    assert result.error is not None and "T2I_COMPILE=1" in str(result.error), result.error
    assert engine.models.evicted == [] and "builtin/tiny-sdxl" in engine.models.loaded_ids()


def test_harvested_adapters_are_kept_in_cpu_memory_and_the_slot_is_in_the_models_bytes():
    """The slot's weights are the model's parameters (in its bytes); the harvested matrices are in CPU
    memory, counted in the budget only when the model runs on the CPU (the same RAM)."""
    from t2i_core.engine.model_manager import module_bytes

    engine = Engine(Settings(dtype="float64"))
    model = engine.load(TINY_SD_ID)
    without = module_bytes(model.text2image)
    usable = [a for a in engine.registry.adapters() if a.family == "sd"]
    slots = CompiledAdapterSlots.prepare(model.text2image, [(a.id, a.local_path(), a.weight_name) for a in usable])
    slot_bytes = sum(p.numel() * p.element_size() for layer in slots._slot.values()
                     for p in (layer.lora_A[SLOT].weight, layer.lora_B[SLOT].weight))
    assert slot_bytes > 0 and module_bytes(model.text2image) == without + slot_bytes
    tensors = [t for h in slots.harvested.values() for a, b, _ in h.layers.values() for t in (a, b)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert slots.bytes() == sum(t.numel() * t.element_size() for t in tensors)  # a CPU model: the same RAM


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_on_cuda_harvested_adapters_stay_pinned_in_host_memory_and_swap_in_unchanged():
    """On an accelerator the harvested matrices take no device memory (nor budget), and the images are
    PEFT's."""
    adapters = [(INK, 1.0), (PASTEL, 0.5)]
    plain = images(Engine(Settings(dtype="float32")), adapters)
    engine = Engine(Settings(dtype="float32"))
    model = engine.load(TINY_SD_ID)
    usable = [a for a in engine.registry.adapters() if a.family == "sd"]
    model.adapters = CompiledAdapterSlots.prepare(model.text2image, [(a.id, a.local_path(), a.weight_name)
                                                                     for a in usable])
    tensors = [t for h in model.adapters.harvested.values() for a, b, _ in h.layers.values() for t in (a, b)]
    assert all(t.device.type == "cpu" and t.is_pinned() for t in tensors) and model.adapters.bytes() == 0
    assert np.abs(images(engine, adapters) - plain).max() <= 2  # float32 on the GPU: the order of sums
