import pytest
import torch
from torch import nn

from tlutils import augment
from tlutils.train import evaluate, fit, predict


def images(n=8, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_transforms_keep_shape_dtype_and_range():
    x = images()
    both = augment.compose(augment.crop_flip(), augment.affine_jitter())
    for fn in (augment.crop_flip(), augment.affine_jitter(), both):
        out = fn(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1 + 1e-6
        assert not torch.equal(out, x), f"{fn.__name__} changed nothing"


def test_flip_crop_and_affine_edge_cases():
    x = images()
    assert torch.equal(augment.random_flip(x, p=1.0), x.flip(-1))
    assert torch.equal(augment.random_flip(x, p=0.0), x)
    assert torch.equal(augment.random_crop(x, padding=0), x)
    same = augment.random_affine(x, degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5), "the identity affine map must return the image"


def test_crop_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    x = images(4)
    out = augment.random_crop(x, padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_get_presets():
    assert augment.get(None) is None and augment.get("none") is None
    assert callable(augment.get("digits")) and callable(augment.get("crop_flip"))
    with pytest.raises(ValueError, match="digits"):
        augment.get("mixup")


class Recorder(nn.Module):
    """Records the inputs it sees, tagged by train/eval mode."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 32 * 32, 2)
        self.seen: list[tuple[bool, torch.Tensor]] = []

    def forward(self, x):
        self.seen.append((self.training, x.detach().clone()))
        return self.lin(x.flatten(1))


def test_fit_augments_training_batches_only():
    x, y = images(64), torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))
    marker = 10.0  # an augmentation that cannot be missed: every pixel + 10

    def shift(batch):
        return batch + marker

    model = Recorder()
    fit(model, (x, y), epochs=2, batch_size=16, val=(x, y), augment=shift, device="cpu", seed=0, progress=False)
    train_inputs = [t for training, t in model.seen if training]
    eval_inputs = [t for training, t in model.seen if not training]
    assert len(train_inputs) == 2 * 4 and all(t.min() >= marker for t in train_inputs), "training batches augmented"
    assert eval_inputs and all(t.max() <= 1.0 for t in eval_inputs), "validation inside fit sees raw inputs"
    model.seen.clear()
    evaluate(model, (x, y), device="cpu")
    predict(model, (x, y), device="cpu")
    assert model.seen and all(t.max() <= 1.0 for _, t in model.seen), "evaluate/predict see unaugmented inputs"
    assert torch.equal(torch.cat([t for _, t in model.seen[: len(model.seen) // 2]]), x)


def test_fit_with_real_augmentation_is_reproducible():
    x, y = images(32), torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(1))
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Recorder()
        fit(model, (x, y), epochs=1, batch_size=16, augment=augment.affine_jitter(), device="cpu", seed=0,
            progress=False)
        weights.append(model.lin.weight.detach().clone())
    assert torch.equal(*weights), "augmentation draws from torch's generator: same seed, same training"
