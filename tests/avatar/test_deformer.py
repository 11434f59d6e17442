"""PoseDeformer: the fast form equals the naive one, the 4-ring mask, zero regions, modes."""

import pytest
import torch

from persona.avatar.deformer import PoseDeformer, RowGroupNorm, Triplane, body_pose_joint_mask
from persona.body.types import SMPLX_JOINT_NAMES, SMPLX_PARENTS

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
JOINT = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)  # Linear initialisation: every test sees the same weights


def _tree_distance(a: int, b: int) -> int:
    """Steps between two joints of the SMPL-X tree (independent of persona.body.kinematics)."""
    def ancestors(j: int) -> list[int]:
        chain = [j]
        while SMPLX_PARENTS[chain[-1]] >= 0:
            chain.append(SMPLX_PARENTS[chain[-1]])
        return chain

    chain_a, chain_b = ancestors(a), ancestors(b)
    common = next(j for j in chain_a if j in chain_b)
    return chain_a.index(common) + chain_b.index(common)


def _inputs(count: int, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    positions = torch.rand(count, 3, generator=generator) * 1.6 - 0.8
    dominant = torch.randint(0, 55, (count,), generator=generator)
    pose = torch.randn(batch, 21, 6, generator=generator)
    zero = torch.rand(count, generator=generator) < 0.3
    return positions, dominant, pose, zero


def _randomise(deformer: PoseDeformer, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        deformer.triplane.planes.normal_(generator=generator)
        # Larger output weights so that differences are visible after the 0.01 scale.
        deformer.output_layer.weight.mul_(100.0)


def test_joint_mask_matches_tree_distance() -> None:
    mask = body_pose_joint_mask(4)
    assert mask.shape == (55, 21)
    for dominant in range(55):
        for body_joint in range(1, 22):
            expected = _tree_distance(dominant, body_joint) <= 4
            assert bool(mask[dominant, body_joint - 1]) == expected, (dominant, body_joint)
    assert body_pose_joint_mask(None).all()


def test_left_wrist_sees_left_elbow_not_right_knee() -> None:
    deformer = PoseDeformer(ring_size=4)
    _randomise(deformer)
    positions = torch.zeros(1, 3)
    dominant = torch.tensor([JOINT["left_wrist"]])
    zero = torch.zeros(1, dtype=torch.bool)
    pose = torch.randn(1, 21, 6, generator=torch.Generator().manual_seed(2))
    base = deformer(positions, dominant, pose, zero).mean_offset
    for name, should_change in (("left_elbow", True), ("right_knee", False),
                                ("left_shoulder", True), ("right_ankle", False)):
        changed_pose = pose.clone()
        changed_pose[0, JOINT[name] - 1] += 1.0  # body joint j is row j - 1 (root excluded)
        out = deformer(positions, dominant, changed_pose, zero).mean_offset
        assert bool((out - base).abs().max() > 1e-6) == should_change, name
    # With the full pose the right knee matters too.
    full = PoseDeformer(ring_size=None)
    full.load_state_dict(deformer.state_dict())
    changed_pose = pose.clone()
    changed_pose[0, JOINT["right_knee"] - 1] += 1.0
    diff = full(positions, dominant, changed_pose, zero).mean_offset - full(
        positions, dominant, pose, zero).mean_offset
    assert float(diff.abs().max()) > 1e-6


@pytest.mark.parametrize("mode", ["mean", "mean_scale", "mean_rgb"])
def test_fast_forward_equals_naive_reference_with_gradients(mode: str) -> None:
    torch.manual_seed(0)  # the Linear layers' initialisation
    deformer = PoseDeformer(mode=mode, triplane_resolution=16, triplane_channels=8)
    _randomise(deformer)
    deformer.double()  # float64: the two forms differ only by summation order
    positions, dominant, pose, zero = _inputs(300)
    positions, pose = positions.double(), pose.double()
    fast = deformer(positions, dominant, pose, zero)
    naive = deformer.forward_reference(positions, dominant, pose, zero)
    torch.testing.assert_close(fast.mean_offset, naive.mean_offset, atol=1e-12, rtol=1e-9)
    assert fast.mean_offset.shape == (2, 300, 3)
    for field, size in (("scale_offset", 1), ("rgb_offset", 3)):
        expected_present = (mode == "mean_scale" and field == "scale_offset") or (
            mode == "mean_rgb" and field == "rgb_offset")
        value = getattr(fast, field)
        assert (value is not None) == expected_present
        if value is not None:
            assert value.shape == (2, 300, size)
            torch.testing.assert_close(value, getattr(naive, field), atol=1e-12, rtol=1e-9)
    weights = torch.randn_like(fast.mean_offset)
    params = list(deformer.parameters())
    grads_fast = torch.autograd.grad((fast.mean_offset * weights).sum(), params)
    grads_naive = torch.autograd.grad((naive.mean_offset * weights).sum(), params)
    for g_fast, g_naive in zip(grads_fast, grads_naive, strict=True):
        torch.testing.assert_close(g_fast, g_naive, atol=1e-10, rtol=1e-8)


def test_zero_regions_pose_detached_and_output_scale() -> None:
    deformer = PoseDeformer()
    _randomise(deformer)
    positions, dominant, pose, zero = _inputs(200, batch=1)
    pose.requires_grad_(True)
    out = deformer(positions, dominant, pose, zero)
    assert float(out.mean_offset[:, zero].abs().max()) == 0.0
    assert float(out.mean_offset[:, ~zero].abs().min()) > 0.0
    out.mean_offset.sum().backward()
    assert pose.grad is None  # the pose input is detached inside
    all_zero = deformer(positions, dominant, pose, torch.ones_like(zero))
    assert float(all_zero.mean_offset.abs().max()) == 0.0
    # output_scale multiplies the MLP output.
    double = PoseDeformer(output_scale=0.02)
    double.load_state_dict(deformer.state_dict())
    torch.testing.assert_close(double(positions, dominant, pose, zero).mean_offset,
                               2 * out.mean_offset)


def test_mode_off_has_no_parameters_and_returns_zeros() -> None:
    deformer = PoseDeformer(mode="off")
    assert list(deformer.parameters()) == []
    positions, dominant, pose, zero = _inputs(10)
    out = deformer(positions, dominant, pose, zero)
    assert out.mean_offset.shape == (2, 10, 3) and float(out.mean_offset.abs().sum()) == 0
    assert out.scale_offset is None and out.rgb_offset is None


def test_triplane_bilinear_sampling_known_values() -> None:
    """Ours before (align_corners=True, border padding), kept as an option."""
    triplane = Triplane(channels=1, resolution=3, extent=2.0, align_corners=True,
                        padding_mode="border")
    with torch.no_grad():
        # Plane xy: value = u index (x); plane xz: value = 10 * v index (z); plane yz: 0.
        triplane.planes[0, 0] = torch.tensor([0.0, 1.0, 2.0]).expand(3, 3)
        triplane.planes[1, 0] = (10 * torch.tensor([0.0, 1.0, 2.0]))[:, None].expand(3, 3)
    points = torch.tensor([[-1.0, 0.3, -1.0], [0.5, -0.2, 0.5], [1.0, 1.0, 0.0],
                           [3.0, 0.0, 0.0]])
    features = triplane(points)
    assert features.shape == (4, 3)
    # Corners at +-extent / 2 = +-1: x = -1 -> index 0, x = 0.5 -> 1.5, outside clamps to 2.
    torch.testing.assert_close(features[:, 0], torch.tensor([0.0, 1.5, 2.0, 2.0]))
    torch.testing.assert_close(features[:, 1], torch.tensor([0.0, 15.0, 10.0, 10.0]))
    torch.testing.assert_close(features[:, 2], torch.zeros(4))


def test_triplane_authors_sampling_cell_centres_and_zero_padding() -> None:
    """The authors' grid_sample defaults (METHOD.md section 12), now Triplane's defaults: cell
    centres half a cell inside +-extent / 2, zeros outside. Old behaviour caught: corners at
    +-extent / 2 and border padding (x = 1 read 3 and x = 3 read 3 below, not 1.5 and 0)."""
    triplane = Triplane(channels=1, resolution=3, extent=2.0)
    assert (triplane.align_corners, triplane.padding_mode) == (False, "zeros")
    assert (PoseDeformer(triplane_resolution=4).triplane.align_corners,
            PoseDeformer(triplane_resolution=4).triplane.padding_mode) == (False, "zeros")
    with torch.no_grad():
        triplane.planes[0, 0] = torch.tensor([1.0, 2.0, 3.0]).expand(3, 3)  # xy: 1 + u index
    # Cell centres at x = -2/3, 0, 2/3 (index i at (2 i + 1) / 3 - 1); y = 0 is the middle row.
    x = torch.tensor([-2.0 / 3.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 3.0])
    points = torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], dim=1)
    features = triplane(points)  # [6, 3]
    # x = 1: half way between the last centre (3) and the zero padding; x = 3: outside.
    torch.testing.assert_close(features[:, 0], torch.tensor([1.0, 2.0, 2.5, 3.0, 1.5, 0.0]))
    torch.testing.assert_close(features[:, 1:], torch.zeros(6, 2))
    with pytest.raises(ValueError, match="padding_mode"):
        Triplane(padding_mode="edge")


def test_bad_inputs_name_the_argument() -> None:
    deformer = PoseDeformer(triplane_resolution=8)
    positions, dominant, pose, zero = _inputs(10)
    with pytest.raises(ValueError, match="body_pose_6d"):
        deformer(positions, dominant, pose[:, :20], zero)
    with pytest.raises(ValueError, match="mode"):
        PoseDeformer(mode="scale")  # type: ignore[arg-type]


def test_given_active_rows_skip_nonzero(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the active rows given (the template keeps them), no torch.nonzero (a host
    synchronisation on CUDA) runs in forward, and the result equals the mask-only call.
    Old behaviour: torch.nonzero on every call."""
    deformer = PoseDeformer(triplane_resolution=8, triplane_channels=4)
    positions, dominant, pose, zero = _inputs(50)
    zero[: 10] = True
    expected = deformer(positions, dominant, pose, zero).mean_offset
    active = torch.nonzero(~zero, as_tuple=True)[0]
    calls = []
    original = torch.nonzero

    def counting_nonzero(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "nonzero", counting_nonzero)
    out = deformer(positions, dominant, pose, zero, active).mean_offset
    assert not calls
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert float(out[:, zero].abs().max()) == 0.0


def test_zero_init_output_starts_at_zero_and_still_learns() -> None:
    positions, dominant, pose, zero = _inputs(50)
    default = PoseDeformer(triplane_resolution=16)
    assert float(default(positions, dominant, pose, zero).mean_offset.abs().max()) > 1e-4
    zeroed = PoseDeformer(triplane_resolution=16, zero_init_output=True)
    assert float(zeroed(positions, dominant, pose, zero).mean_offset.abs().max()) == 0.0
    # the zero output layer still passes gradient to itself, so a target is reachable
    target = torch.full((2, 50, 3), 0.01)
    target[:, zero] = 0.0
    optimiser = torch.optim.Adam(zeroed.parameters(), lr=1e-2)
    for _ in range(60):
        loss = (zeroed(positions, dominant, pose, zero).mean_offset - target).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss) < 0.2 * 0.01 * 0.7  # below a fifth of the start (mean |target| = 0.007)


def test_reset_parameters_draws_a_fresh_deformer() -> None:
    """After training, reset_parameters puts every parameter back to its initial distribution:
    the triplane at 0, GroupNorm at (1, 0), the zero-initialised output at 0, the linear layers
    redrawn (seeded: two resets from the same seed are equal) and away from the trained values."""
    positions, dominant, pose, zero = _inputs(50)
    for zero_output in (False, True):
        deformer = PoseDeformer(triplane_resolution=16, zero_init_output=zero_output)
        optimiser = torch.optim.Adam(deformer.parameters(), lr=1e-2)
        for _ in range(3):
            loss = (deformer(positions, dominant, pose, zero).mean_offset - 0.01).abs().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        trained = {n: p.detach().clone() for n, p in deformer.named_parameters()}
        assert float(deformer.triplane.planes.abs().max()) > 0  # training moved them
        torch.manual_seed(5)
        deformer.reset_parameters()
        first = {n: p.detach().clone() for n, p in deformer.named_parameters()}
        torch.manual_seed(5)
        deformer.reset_parameters()
        for name, value in deformer.named_parameters():
            assert torch.equal(value, first[name]), name
        assert float(deformer.triplane.planes.abs().max()) == 0.0
        assert torch.equal(deformer.input_norm.weight, torch.ones_like(deformer.input_norm.weight))
        assert float(deformer.input_norm.bias.abs().max()) == 0.0
        assert not torch.equal(deformer.input_layer.weight, trained["input_layer.weight"])
        output = deformer(positions, dominant, pose, zero).mean_offset
        assert (float(output.abs().max()) == 0.0) == zero_output
    PoseDeformer(mode="off").reset_parameters()  # nothing to reset


def test_row_group_norm_is_group_norm_in_float64() -> None:
    """RowGroupNorm (layer norm per group + affine) against torch's group_norm: values and the
    gradients of input, weight and bias, with and without the affine; a 3-D input goes through
    GroupNorm's own forward; the state dict is GroupNorm's."""
    generator = torch.Generator().manual_seed(5)
    for affine in (True, False):
        norm = RowGroupNorm(4, 16, affine=affine).double()
        if affine:
            with torch.no_grad():
                norm.weight.copy_(torch.rand(16, generator=generator, dtype=torch.float64) + 0.5)
                norm.bias.copy_(torch.randn(16, generator=generator, dtype=torch.float64))
        x = (torch.randn(37, 16, generator=generator, dtype=torch.float64) * 3 + 1
             ).requires_grad_(True)
        upstream = torch.randn(37, 16, generator=generator, dtype=torch.float64)
        params = [x] + ([norm.weight, norm.bias] if affine else [])
        got = norm(x)
        want = torch.nn.functional.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for g, w in zip(torch.autograd.grad(got, params, upstream),
                        torch.autograd.grad(want, params, upstream), strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    spatial = torch.randn(2, 16, 5, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(norm(spatial), torch.nn.functional.group_norm(spatial, 4,
                                                                             eps=norm.eps))
    assert set(RowGroupNorm(4, 16).state_dict()) == set(torch.nn.GroupNorm(4, 16).state_dict())
