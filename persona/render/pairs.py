"""The "pairs" rasteriser: only (Gaussian, pixel) pairs inside each Gaussian's cut-off ellipse.

Steps (all vectorised; the only Python loop is over row bands that bound memory):

1. ``build_row_spans`` (no gradient): for every depth-sorted Gaussian and every pixel row its
   ellipse ``power >= max(-4.5, ln(1/(255 o)))`` crosses, the exact column interval (a quadratic
   in dx), slightly enlarged so that rounding never loses a pair. Those are "row spans".
2. ``_PairsRaster.forward``: expand spans to pairs, evaluate ``alpha`` exactly as every backend
   does, drop pairs that fail the exact test, stable-sort by pixel (the list is in depth order,
   so each pixel's pairs stay front to back), segmented transmittance scan (float64 cumsum of
   ``log(1 - alpha)`` minus the segment base), drop terminated pairs, composite every channel at
   once as the sparse product ``W [HW x M] @ V [M x C]`` (no ``[pairs, C]`` tensor is built).
3. ``_PairsRaster.backward``: ``dL/dV = W^T G``; ``g_p = dL/dw_p`` by a sampled dense-dense
   product over the geometry-gradient columns only; the analytic gradient of front-to-back
   compositing ``dL/da_p = T_p g_p - S_p / (1 - a_p)`` with ``S_p`` the segmented suffix sum of
   ``w_q g_q`` (float64); per-Gaussian sums of ``dL/dpower`` x (1, u, v, u^2, uv, v^2) by one more
   sparse product, expanded about each mean into gradients of the mean, conic and opacity.
Where sparse CSR is unsupported (not CPU/CUDA) the products fall back to gather + index_add.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from persona.render.compositing import ALPHA_MIN, POWER_MIN, TRANSMITTANCE_MIN

ELLIPSE_MARGIN_REL = 1e-4  # enumeration ellipse enlarged by this fraction (rounding safety)
ELLIPSE_MARGIN_ABS = 1e-3  # ... plus this much Mahalanobis^2 (the exact test decides)
PIXEL_MARGIN = 1e-3  # pixels added to each enumerated interval (the exact test decides)
LOG_T_MIN = math.log(TRANSMITTANCE_MIN)


def take(src: Tensor, index: Tensor) -> Tensor:
    """src[index] along dim 0 (index_select: an order of magnitude faster than indexing on CPU)."""
    return src.index_select(0, index)


@dataclass
class RowSpans:
    """One entry per (Gaussian, pixel row) whose cut-off ellipse crosses the row; no gradient."""

    gauss: Tensor  # [R] int64 index into the depth-sorted Gaussians
    row: Tensor  # [R] int64 pixel row
    col0: Tensor  # [R] int64 first pixel column
    ncol: Tensor  # [R] int64 number of columns (>= 1)
    dy: Tensor  # [R] row centre minus mean v
    dx0: Tensor  # [R] first column centre minus mean u


def build_row_spans(mean2d: Tensor, conic: Tensor, cov_diag: Tensor, opacity: Tensor,
                    height: int, width: int) -> RowSpans:
    """Row spans of depth-sorted Gaussians (detached inputs, [M, 2], [M, 3], [M, 2], [M])."""
    device = mean2d.device
    mx, my = mean2d[:, 0], mean2d[:, 1]
    a, b, c = conic.unbind(-1)
    # Mahalanobis^2 level below which alpha >= 1/255 and power >= -4.5.
    level = torch.clamp(-2.0 * torch.log(ALPHA_MIN / opacity.clamp(min=1e-30)),
                        max=-2.0 * POWER_MIN)  # [M]
    level = torch.where(opacity >= ALPHA_MIN, level, torch.full_like(level, -1.0))
    level = level * (1 + ELLIPSE_MARGIN_REL) + ELLIPSE_MARGIN_ABS
    half_h = torch.sqrt(level.clamp(min=0) * cov_diag[:, 1])  # [M] ellipse half height
    row0 = torch.ceil(my - half_h - 0.5 - PIXEL_MARGIN).clamp(min=0)
    row1 = torch.floor(my + half_h - 0.5 + PIXEL_MARGIN).clamp(max=height - 1)
    nrow = torch.where(level > 0, row1 - row0 + 1, torch.zeros_like(row0)).clamp(min=0)
    nrow = nrow.to(torch.int64)  # [M]
    gauss = torch.repeat_interleave(torch.arange(mean2d.shape[0], device=device), nrow)  # [R]
    first = torch.cumsum(nrow, 0) - nrow  # [M]
    local = torch.arange(gauss.shape[0], device=device) - take(first, gauss)  # [R]
    row = take(row0.to(torch.int64), gauss) + local
    dy = row.to(mean2d.dtype) + 0.5 - take(my, gauss)  # [R]
    ag, bg, cg, lg = take(a, gauss), take(b, gauss), take(c, gauss), take(level, gauss)
    disc = (bg * dy) ** 2 - ag * (cg * dy * dy - lg)
    root = torch.sqrt(disc.clamp(min=0))
    centre = take(mx, gauss) - 0.5 - bg * dy / ag  # column (index space) of the chord centre
    col0 = torch.ceil(centre - root / ag - PIXEL_MARGIN).clamp(min=0)
    col1 = torch.floor(centre + root / ag + PIXEL_MARGIN).clamp(max=width - 1)
    ncol = torch.where(disc >= 0, col1 - col0 + 1, torch.zeros_like(col0)).clamp(min=0)
    keep = ncol > 0
    col0, ncol = col0[keep].to(torch.int64), ncol[keep].to(torch.int64)
    gauss, row, dy = gauss[keep], row[keep], dy[keep]
    dx0 = col0.to(mean2d.dtype) + 0.5 - take(mx, gauss)
    return RowSpans(gauss, row, col0, ncol, dy, dx0)


def split_bands(spans: RowSpans, height: int, max_pairs: int) -> list[tuple[int, int]]:
    """Row bands [r0, r1) holding about max_pairs enumerated pairs each (a band holds at least
    one row, so one very full row may exceed the budget)."""
    per_row = torch.zeros(height, dtype=torch.int64, device=spans.row.device)
    per_row.index_add_(0, spans.row, spans.ncol)
    before = torch.cumsum(per_row, 0) - per_row  # [H] pairs in the rows above
    band_of_row = torch.div(before, max(max_pairs, 1), rounding_mode="floor")  # [H]
    starts = torch.ones(height, dtype=torch.bool, device=per_row.device)
    starts[1:] = band_of_row[1:] != band_of_row[:-1]
    edges = starts.nonzero().squeeze(1).tolist() + [height]
    return list(zip(edges[:-1], edges[1:], strict=True))


def select_band(spans: RowSpans, row0: int, row1: int) -> RowSpans:
    """Spans whose row is in [row0, row1) (order, hence depth order, preserved)."""
    m = (spans.row >= row0) & (spans.row < row1)
    return RowSpans(spans.gauss[m], spans.row[m], spans.col0[m], spans.ncol[m], spans.dy[m],
                    spans.dx0[m])


def _csr(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """Sparse CSR matrix from row-sorted entries (rows [P] int, cols [P] int64, vals [P])."""
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=vals.device)
    torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0, out=crow[1:])
    with warnings.catch_warnings():  # "CSR support is in beta" (the ops used here are stable)
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def _spmm(rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int, dense: Tensor,
          sparse: bool) -> Tensor:
    """out[r] = sum over entries (r, c, v) of v * dense[c] -> [n_rows, D]; entries row-sorted.
    ``sparse``: a CSR product (CPU, CUDA); else gather + index_add (any device, slower)."""
    if sparse:
        return _csr(rows, cols, vals, (n_rows, dense.shape[0])) @ dense
    out = dense.new_zeros(n_rows, dense.shape[1])
    return out.index_add_(0, rows.to(torch.int64), take(dense, cols) * vals[:, None])


def _row_dots(rows: Tensor, cols: Tensor, a: Tensor, b: Tensor, sparse: bool) -> Tensor:
    """<a[rows[p]], b[cols[p]]> for every entry p [P]; entries row-sorted."""
    if sparse:
        pattern = _csr(rows, cols, torch.zeros_like(rows, dtype=a.dtype), (a.shape[0], b.shape[0]))
        return torch.sparse.sampled_addmm(pattern, a, b.t().contiguous(), beta=0.0).values()
    return (take(a, rows.to(torch.int64)) * take(b, cols)).sum(1)


def _pixel_moments_basis(n_pixels: int, width: int, row0: int, like: Tensor) -> Tensor:
    """[HW, 6] float64 table (1, u, v, u^2, u v, v^2) of the band's pixel centres."""
    idx = torch.arange(n_pixels, device=like.device)
    u = (idx % width).double() + 0.5
    v = (idx // width + row0).double() + 0.5
    return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], dim=1)


class _PairsRaster(torch.autograd.Function):
    """Composite one row band. Inputs are the depth-sorted visible Gaussians."""

    @staticmethod
    def forward(ctx, mean2d: Tensor, conic: Tensor, opacity: Tensor, values: Tensor,
                span_gauss: Tensor, span_pix0: Tensor, span_ncol: Tensor, span_dy: Tensor,
                span_dx0: Tensor, band: tuple[int, int, int], n_geometry: int,
                max_alpha: float, sparse: bool) -> Tensor:
        device, dtype = values.device, values.dtype
        n_pixels = band[0]
        n_span = span_gauss.shape[0]
        n_pairs = int(span_ncol.sum()) if n_span else 0
        span_of = torch.repeat_interleave(torch.arange(n_span, device=device, dtype=torch.int32),
                                          span_ncol, output_size=n_pairs)  # [P] int32
        first = (torch.cumsum(span_ncol, 0) - span_ncol).to(torch.int32)  # [R]
        k = torch.arange(n_pairs, device=device, dtype=torch.int32) - take(first, span_of)  # [P]
        a, b, c = take(conic, span_gauss).unbind(-1)  # [R] each
        dy = span_dy
        c0 = -0.5 * c * dy * dy  # [R] the row's constant part of the exponent
        c1 = -b * dy  # [R] linear coefficient in dx
        c2 = -0.5 * a  # [R] quadratic coefficient in dx
        dx = k.to(dtype) + take(span_dx0, span_of)  # [P]
        power = take(c0, span_of) + dx * (take(c1, span_of) + take(c2, span_of) * dx)  # [P]
        span_opacity = take(opacity, span_gauss)  # [R]
        alpha = torch.clamp_max(take(span_opacity, span_of) * torch.exp(power), max_alpha)
        keep = (power >= POWER_MIN) & (alpha >= ALPHA_MIN)  # [P]
        pix = take(span_pix0, span_of) + k  # [P] int32 pixel index within the band
        key = torch.where(keep, pix, torch.full_like(pix, n_pixels))
        key_sorted, order = torch.sort(key, stable=True)
        n_keep = int(keep.sum())
        order = order[:n_keep]
        pix = key_sorted[:n_keep]
        alpha, span_of = take(alpha, order), take(span_of, order)

        # Segmented transmittance scan (float64 for the global prefix sum).
        log1m = torch.log1p(-alpha.double())  # [P]
        cs = torch.cumsum(log1m, 0)
        counts = torch.bincount(pix, minlength=n_pixels)  # [HW] pairs per pixel
        first_of_pixel = torch.cumsum(counts, 0) - counts  # [HW] (junk for empty pixels)
        log_t_before = cs.new_zeros(n_keep + 1)  # [P + 1] (the pad serves empty bands)
        torch.sub(cs, log1m, out=log_t_before[:n_keep])
        base = take(log_t_before, first_of_pixel.clamp(max=n_keep))  # [HW] log T at its start
        log_t_after = cs - take(base, pix)  # [P] log T after each pair
        contrib = (log_t_after > LOG_T_MIN).nonzero().squeeze(1)
        trans = torch.exp(take(log_t_after - log1m, contrib)).to(dtype)  # [P'] T before it
        alpha, span_of, pix = take(alpha, contrib), take(span_of, contrib), take(pix, contrib)
        gauss = take(span_gauss, span_of)  # [P'] int64
        weight = alpha * trans  # [P']
        image = _spmm(pix, gauss, weight, n_pixels, values, sparse)  # [HW, C]
        ctx.save_for_backward(mean2d, conic, opacity, values, gauss, pix, alpha, trans)
        ctx.band, ctx.n_geometry, ctx.max_alpha, ctx.sparse = band, n_geometry, max_alpha, sparse
        return image

    @staticmethod
    def backward(ctx, grad_image: Tensor):  # noqa: D401 - autograd signature
        mean2d, conic, opacity, values, gauss, pix, alpha, trans = ctx.saved_tensors
        ng, sparse = ctx.n_geometry, ctx.sparse
        n_pixels, width, row0 = ctx.band
        m = values.shape[0]
        weight = alpha * trans
        # Gaussian-major order of the pairs, for the transposed products.
        order = torch.sort(gauss.to(torch.int32), stable=True).indices
        gauss_t, pix_t = take(gauss, order), take(pix, order).to(torch.int64)
        grad_values = None
        if ctx.needs_input_grad[3]:
            grad_values = _spmm(gauss_t, pix_t, take(weight, order), m, grad_image, sparse)
        grad_mean = grad_conic = grad_opacity = None
        if any(ctx.needs_input_grad[:3]):
            # dL/dw per pair = <grad_image[pixel, :ng], values[gauss, :ng]> (sampled matmul).
            dw = _row_dots(pix, gauss, grad_image[:, :ng].contiguous(), values[:, :ng], sparse)
            x = torch.cumsum((dw * weight).double(), 0)  # [P]
            counts = torch.bincount(pix, minlength=n_pixels)
            last_of_pixel = (torch.cumsum(counts, 0) - 1).clamp(min=0)  # [HW]
            x_pad = x.new_zeros(x.shape[0] + 1)  # [P + 1] (the pad serves empty bands)
            x_pad[:-1] = x
            # sum of w dL/dw over the later pairs of the same pixel
            suffix = (take(take(x_pad, last_of_pixel), pix) - x).to(alpha.dtype)
            d_alpha = dw * trans - suffix / (1 - alpha)
            d_power = torch.where(alpha >= ctx.max_alpha, torch.zeros_like(d_alpha),
                                  d_alpha * alpha)  # alpha = o exp(power) unless clamped
            # Per-Gaussian sums of d_power x (1, u, v, u^2, uv, v^2) as one sparse product
            # (float64: the moments about the mean are recovered by expanding (u - mean)^k).
            s = _spmm(gauss_t, pix_t, take(d_power, order).double(), m,
                      _pixel_moments_basis(n_pixels, width, row0, values), sparse)  # [M, 6]
            mx, my = mean2d[:, 0].double(), mean2d[:, 1].double()
            s1, su, sv, suu, suv, svv = s.unbind(-1)
            s_x = su - mx * s1  # sum d_power dx
            s_y = sv - my * s1
            s_xx = suu - 2 * mx * su + mx * mx * s1
            s_xy = suv - mx * sv - my * su + mx * my * s1
            s_yy = svv - 2 * my * sv + my * my * s1
            a, b, c = conic.double().unbind(-1)
            # power = -0.5 (a dx^2 + c dy^2) - b dx dy with dx = u - mean_u.
            dt = mean2d.dtype
            grad_mean = torch.stack([a * s_x + b * s_y, c * s_y + b * s_x], dim=-1).to(dt)
            grad_conic = torch.stack([-0.5 * s_xx, -s_xy, -0.5 * s_yy], dim=-1).to(dt)
            grad_opacity = (s1 / opacity.double()).to(dt)  # d alpha / d o = alpha / o
        return (grad_mean, grad_conic, grad_opacity, grad_values,
                None, None, None, None, None, None, None, None, None)


def rasterize_pairs(mean2d: Tensor, conic: Tensor, cov_diag: Tensor, opacity: Tensor,
                    values: Tensor, n_geometry: int, height: int, width: int,
                    max_alpha: float, max_pairs: int, sparse: bool | None = None) -> Tensor:
    """Composite depth-sorted Gaussians ([M, ...] each) into an image [H*W, C].
    ``sparse``: use sparse CSR products (default: on CPU and CUDA, where torch supports them)."""
    if sparse is None:
        sparse = values.device.type in ("cpu", "cuda")
    with torch.no_grad():
        spans = build_row_spans(mean2d.detach(), conic.detach(), cov_diag.detach(),
                                opacity.detach(), height, width)
        bands = split_bands(spans, height, max_pairs)
    images = []
    for row0, row1 in bands:
        band = spans if len(bands) == 1 else select_band(spans, row0, row1)
        pix0 = ((band.row - row0) * width + band.col0).to(torch.int32)  # [R]
        images.append(_PairsRaster.apply(
            mean2d, conic, opacity, values, band.gauss, pix0, band.ncol, band.dy, band.dx0,
            ((row1 - row0) * width, width, row0), n_geometry, max_alpha, sparse))
    return images[0] if len(images) == 1 else torch.cat(images, dim=0)
