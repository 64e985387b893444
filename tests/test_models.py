"""Model loading: built-in architectures, checkpoint round trips, pretrained cache, offline."""

from __future__ import annotations

import os
import threading

import open_clip
import pytest
import torch
from open_clip import pretrained as open_clip_pretrained
from PIL import Image
from safetensors.torch import save_file

from clipkit.errors import ModelSpecError, UnsafeCheckpointError, WeightsUnavailableError
from clipkit.models import describe_model, downloads, list_models, load_model
from clipkit.models.checkpoints import write_checkpoint
from clipkit.models.openclip import loaders as models
from clipkit.models.specs import parse_spec
from tests.helpers import TINY

TEXTS = ["a small red triangle", "a large blue circle on a grey background", ""]


def _images(encoder, n=3):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, *encoder.image_size, generator=generator)


def test_tiny_encoder_outputs_unit_norm_float32(tiny_encoder):
    images = tiny_encoder.encode_images(_images(tiny_encoder))
    texts = tiny_encoder.encode_texts(TEXTS)
    for features, rows in ((images, 3), (texts, len(TEXTS))):
        assert features.shape == (rows, tiny_encoder.embed_dim)
        assert features.dtype == torch.float32
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(rows))


def test_tiny_shape_matches_its_documented_size(tiny_encoder):
    assert (tiny_encoder.embed_dim, tiny_encoder.image_size) == (128, (64, 64))
    assert tiny_encoder.context_length == 32
    total = sum(p.numel() for p in tiny_encoder.model.parameters())
    assert 8_000_000 < total < 10_000_000


def test_random_init_is_deterministic_and_leaves_global_rng_alone(tiny_encoder):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    again = load_model(TINY, device="cpu")
    assert torch.rand(1) == expected_next  # loading did not consume the caller's RNG
    assert again.fingerprint == tiny_encoder.fingerprint
    torch.testing.assert_close(again.encode_texts(TEXTS), tiny_encoder.encode_texts(TEXTS))


def test_preprocess_matches_the_model_input(tiny_encoder):
    pixels = tiny_encoder.preprocess_image(Image.new("RGB", (300, 200), (255, 0, 0)))
    assert pixels.shape == (3, 64, 64)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip_by_path_alone(tmp_path, tiny_encoder, suffix):
    # Perturb the weights so the checkpoint differs from anything the registry could rebuild.
    model = load_model(TINY, device="cpu").model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = tmp_path / f"tuned{suffix}"
    write_checkpoint(path, model.state_dict(), tiny_encoder.checkpoint_meta(step="7"))
    loaded = load_model(str(path), device="cpu")
    assert loaded.fingerprint != tiny_encoder.fingerprint
    assert loaded.arch == "clipkit-tiny" and loaded.context_length == 32
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(model.encode_text(loaded.tokenize(TEXTS)), dim=-1)
    torch.testing.assert_close(loaded.encode_texts(TEXTS), reference, rtol=0, atol=0)
    images = _images(loaded)
    with torch.inference_mode():
        reference_images = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    torch.testing.assert_close(loaded.encode_images(images), reference_images, rtol=0, atol=0)


def test_unmodified_checkpoint_keeps_the_fingerprint(tmp_path, tiny_encoder):
    path = tmp_path / "run" / "best.safetensors"
    write_checkpoint(path, tiny_encoder.model.state_dict(), tiny_encoder.checkpoint_meta())
    by_folder = load_model(str(tmp_path / "run"), device="cpu")
    assert by_folder.fingerprint == tiny_encoder.fingerprint


def test_checkpoint_with_its_own_architecture_config(tmp_path):
    # A config no registry entry has (e.g. a variant saved by training) loads from the file alone.
    config = open_clip.get_model_config("clipkit-tiny")
    config["embed_dim"] = 48
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = open_clip.CLIP(**config)
    meta = models.CheckpointMeta(
        "custom-tiny", config, {"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    )
    path = write_checkpoint(tmp_path / "custom.safetensors", model.state_dict(), meta)
    loaded = load_model(str(path), device="cpu")
    assert loaded.embed_dim == 48
    assert loaded.preprocess_config["mean"] == [0.5, 0.5, 0.5]
    assert loaded.encode_texts(["x"]).shape == (1, 48)


def test_foreign_checkpoint_needs_the_architecture_named(tmp_path, tiny_encoder):
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": tiny_encoder.model.state_dict()}, path)
    with pytest.raises(ModelSpecError) as info:
        load_model(str(path), device="cpu")
    assert str(path) in info.value.hint
    loaded = load_model(f"clipkit-tiny:{path}", device="cpu")
    assert loaded.fingerprint == tiny_encoder.fingerprint


def test_checkpoint_that_does_not_fit_its_config(tmp_path, tiny_encoder):
    state = dict(tiny_encoder.model.state_dict())
    state.pop("logit_scale")
    path = write_checkpoint(tmp_path / "cut.safetensors", state, tiny_encoder.checkpoint_meta())
    with pytest.raises(ModelSpecError, match="does not match its recorded architecture"):
        load_model(str(path), device="cpu")


def test_malicious_checkpoint_through_load_model(tmp_path):
    marker = tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w')",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError):
        load_model(str(tmp_path / "evil.pt"), device="cpu")
    assert not marker.exists()


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ModelSpecError, match="Unknown model architecture") as info:
        load_model("ViT-B-23:random", device="cpu")
    assert "ViT-B-32" in info.value.hint


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(ModelSpecError, match="no pretrained tag 'nope'") as info:
        load_model("ViT-B-32:nope", device="cpu")
    assert "laion2b_s34b_b79k" in info.value.hint


def test_bare_arch_resolves_to_its_default_tag():
    spec = parse_spec("ViT-B-32")
    assert models._default_tag("ViT-B-32", spec) == "laion2b_s34b_b79k"
    assert (
        models._default_tag("RN101", parse_spec("RN101"))
        == (open_clip.list_pretrained_tags_by_model("RN101")[0])
    )
    with pytest.raises(ModelSpecError, match="no pretrained weights") as info:
        load_model("clipkit-tiny", device="cpu")
    assert TINY in info.value.hint


def test_missing_pretrained_weights_offline_fail_with_the_ways_out():
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("ViT-B-32:laion2b_s34b_b79k", device="cpu")
    assert "ViT-B-32:laion2b_s34b_b79k" in info.value.message
    for way_out in ("checkpoint", "HF_HUB_OFFLINE=1", "quickstart"):
        assert way_out in info.value.hint


def test_unreachable_host_fails_before_any_download(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def refuse(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    def must_not_download(*args, **kwargs):
        raise AssertionError("download attempted although the host is unreachable")

    monkeypatch.setattr(downloads.socket, "create_connection", refuse)
    monkeypatch.setattr(open_clip, "download_pretrained", must_not_download)
    with pytest.raises(WeightsUnavailableError, match="cannot be reached"):
        load_model("ViT-B-32:laion2b_s34b_b79k", device="cpu")


def test_a_hanging_download_is_abandoned(monkeypatch):
    monkeypatch.setattr(downloads, "WEIGHTS_TIMEOUT_S", 0.2)
    release = threading.Event()
    with pytest.raises(WeightsUnavailableError, match="no answer within"):
        downloads.with_timeout(release.wait, "ViT-B-32")
    release.set()


def test_pretrained_tag_loads_from_a_populated_cache(monkeypatch, tiny_encoder):
    """A tag whose weights are in the Hugging Face cache loads offline, with its preprocessing."""
    from huggingface_hub import constants

    repo = "clipkit-tests/tiny"
    mean, std = (0.25, 0.5, 0.75), (0.2, 0.3, 0.4)
    tag_cfg = open_clip_pretrained._pcfg(hf_hub=f"{repo}/", mean=mean, std=std)
    monkeypatch.setitem(open_clip_pretrained._PRETRAINED, "clipkit-tiny", {"unittest": tag_cfg})
    snapshot = constants.HF_HUB_CACHE + "/models--clipkit-tests--tiny"
    os.makedirs(f"{snapshot}/snapshots/abc123", exist_ok=True)
    os.makedirs(f"{snapshot}/refs", exist_ok=True)
    with open(f"{snapshot}/refs/main", "w") as handle:
        handle.write("abc123")
    save_file(
        {k: v.contiguous() for k, v in tiny_encoder.model.state_dict().items()},
        f"{snapshot}/snapshots/abc123/open_clip_model.safetensors",
    )
    assert any(row.spec == "clipkit-tiny:unittest" and row.cached for row in list_models("tiny"))
    loaded = load_model("clipkit-tiny:unittest", device="cpu")
    assert loaded.weights == "pretrained clipkit-tiny:unittest"
    assert loaded.preprocess_config["mean"] == list(mean)
    assert loaded.preprocess_config["std"] == list(std)
    torch.testing.assert_close(loaded.encode_texts(TEXTS), tiny_encoder.encode_texts(TEXTS))
    # Same weights, different preprocessing: a different model identity.
    assert loaded.fingerprint != tiny_encoder.fingerprint


def test_list_models_filters_and_includes_builtins():
    rows = list_models("clipkit")
    assert {row.spec for row in rows} >= {TINY, "clipkit-small:random"}
    assert all("clipkit" in row.spec.lower() for row in rows)
    everything = list_models()
    assert any(row.spec == "ViT-B-32:laion2b_s34b_b79k" for row in everything)
    assert list_models(cached_only=True) == [row for row in everything if row.cached]


def test_describe_model_counts_parameters(tiny_encoder):
    info = describe_model(TINY)
    total = sum(p.numel() for p in tiny_encoder.model.parameters())
    assert info.parameters == total == info.vision_parameters + info.text_parameters
    assert info.fingerprint == tiny_encoder.fingerprint
    assert (info.embed_dim, info.image_size, info.context_length) == (128, "64x64", 32)


_REGISTERING = """
import dataclasses, sys
from pathlib import Path
from clipkit.models import load_model
from clipkit.models.openclip import loaders as openclip
from clipkit.models.checkpoints import write_checkpoint
tiny = load_model("clipkit-tiny:random", device="cpu")
meta = tiny.checkpoint_meta()
# A config open_clip does not know under the arch's name (quick_gelu has no weights of its own)
meta = dataclasses.replace(meta, model_config={**meta.model_config, "quick_gelu": True})
write_checkpoint(Path(sys.argv[1]), tiny.model.state_dict(), meta)
load_model(sys.argv[1], device="cpu")
print(openclip._registry.name)
"""


@pytest.mark.e2e
def test_the_config_registry_folder_is_removed_when_the_process_ends(tmp_path):
    """open_clip reads configs only from files: clipkit's folder for them used to stay in /tmp
    after every process that loaded a checkpoint with its own config."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", _REGISTERING, str(tmp_path / "variant.safetensors")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("clipkit-configs-")
    assert not folder.exists()


def test_loading_a_model_leaves_the_root_logger_alone(monkeypatch, caplog):
    """The root logger's level was raised to ERROR while open_clip built a model, silencing
    every other library's and the user's warnings in that window."""
    import logging

    import open_clip

    from clipkit.models import load_model

    seen_levels = []
    real_create = open_clip.create_model

    def create(*args, **kwargs):
        seen_levels.append(logging.getLogger().level)
        logging.getLogger("someone.else").warning("not open_clip's")
        return real_create(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", create)
    before = logging.getLogger().level
    with caplog.at_level(logging.WARNING):
        load_model(TINY, device="cpu")
    assert seen_levels == [before] and logging.getLogger().level == before
    assert "not open_clip's" in caplog.text
