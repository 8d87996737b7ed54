"""MTCNN's three-stage cascade over a batch of same-size images, with batched box crops.

Same arithmetic, step for step, as facenet-pytorch's ``detect_face`` (its pretrained P/R/O-Nets
and its small box helpers are reused), so boxes, scores and points are bitwise the same. What
differs is how pixels become net inputs. facenet-pytorch area-resizes every candidate box with
its own ``interpolate`` call (most of the detection time on small images), and every pyramid
level from a float copy of the batch. Here, for uint8 images on the host, both are separable
integer window sums: every window sum of integer pixels is an exact integer in float32 whatever
the order of the additions, and the one rounding step (torch's ``sum / kh / kw``) is done the
same way, so many boxes are resized per call and the result is still bit for bit torch's.
Other inputs (float pixels, GPU tensors) group boxes by crop size and use torch's own pool.
Boxes keep facenet-pytorch's order: the nets' batch order decides NMS ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    generateBoundingBox,
    imresample,
    rerec,
)
from torch.nn.functional import adaptive_avg_pool2d
from torchvision.ops.boxes import batched_nms

# facenet-pytorch feeds R/O-Net at most this many boxes per forward pass. Kept identical:
# a different batch size may pick a different conv algorithm and move the last float bits.
_NET_CHUNK = 512


@dataclass
class CascadeOutput:
    """Every face kept in the batch, ordered as facenet-pytorch orders them."""

    boxes: np.ndarray  # (n, 5) x1, y1, x2, y2, score (float32)
    points: np.ndarray  # (n, 5, 2)
    image_index: np.ndarray  # (n,) which image of the batch


def _normalise(x: torch.Tensor) -> torch.Tensor:
    # MTCNN's input scaling: [0, 255] -> about [-1, 1].
    return (x - 127.5) * 0.0078125


def _pyramid(h: int, w: int, min_face: float, factor: float) -> list[float]:
    """P-Net scales: the smallest face maps onto P-Net's 12 px window, then shrink by
    ``factor`` while the shorter side still holds one window."""
    scale = 12.0 / min_face
    side = min(h, w) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def _run_net(net, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outs = [net(x[i:i + _NET_CHUNK]) for i in range(0, len(x), _NET_CHUNK)]
    return tuple(torch.cat(parts, dim=0) for parts in zip(*outs))


def _crop_bounds(boxes: torch.Tensor, w: int, h: int) -> np.ndarray:
    """Integer crop windows (x0, y0, x1, y1), half-open, of boxes clipped to the image.

    MTCNN truncates the float box and treats x1/y1 as 1-based, so the slice starts one pixel
    left/up of the truncated corner; clipping happens on those 1-based values.
    """
    b = boxes[:, :4].trunc().int().cpu().numpy()
    x0 = np.maximum(b[:, 0], 1) - 1
    y0 = np.maximum(b[:, 1], 1) - 1
    x1 = np.minimum(b[:, 2], w)
    y1 = np.minimum(b[:, 3], h)
    return np.stack([x0, y0, x1, y1], axis=1)


def _pool_windows(length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-pool windows along one axis: (n, size) starts and lengths for inputs of
    ``length`` pixels, ``[floor(i * length / size), ceil((i + 1) * length / size))``."""
    i = np.arange(size)
    start = (i * length[:, None]) // size
    end = -((-(i + 1) * length[:, None]) // size)
    return start, end - start


def _chunks(cost: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive runs of ``range(len(cost))`` whose padded cost (run length times its
    largest cost) stays within ``budget`` (one row at least)."""
    runs, first, top = [], 0, 0
    for k, c in enumerate(cost.tolist()):
        top = max(top, c)
        if k > first and (k - first + 1) * top > budget:
            runs.append(np.arange(first, k))
            first, top = k, c
    runs.append(np.arange(first, len(cost)))
    return runs


# Padded row-window entries (k * size * window * width) per chunk of boxes: small enough
# for the chunk's temporaries to stay in cache, large enough to amortise the calls.
_CHUNK_BUDGET = 500_000


class _HostPixels:
    """A uint8 NHWC batch on the host, each image followed by one row of zeros.

    ``planes`` is the batch as (N, H + 1, W * C), the zero row last. ``rows(w)`` is a view
    whose row ``p`` is the ``w`` pixels starting at flat pixel ``p`` (rows overlap; nothing
    is copied); flat pixel ``(b * (H + 1) + y) * W + x`` is image b's (y, x), and row
    ``zero`` (image 0's zero row) reads only zeros.
    """

    def __init__(self, x: np.ndarray):
        n, self.h, self.w, self.c = x.shape
        self.zero = self.h * self.w
        # A row view starting in an image's last row runs at most one image row on: into
        # that image's zero row, so no extra padding is needed.
        self.buf = np.zeros(n * (self.h + 1) * self.w * self.c, np.uint8)
        self.planes = self.buf.reshape(n, self.h + 1, self.w * self.c)
        self.planes[:, :self.h] = x.reshape(n, self.h, -1)

    def pixel(self, image: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Flat pixel index of column 0 of row ``y`` of image ``image``."""
        return (image * (self.h + 1) + y) * self.w

    def rows(self, w: int) -> np.ndarray:
        n_px = self.buf.size // self.c
        return np.lib.stride_tricks.as_strided(self.buf, (n_px - w + 1, w * self.c),
                                               (self.c, 1), writeable=False)


def _area_resize_uint8(px: _HostPixels, out_h: int, out_w: int) -> torch.Tensor:
    """The whole batch area-resized to (out_h, out_w), exactly as ``imresample`` does it
    on the float batch: (N, C, out_h, out_w) float32 with channels-last strides (the layout
    interpolate returns for that input, so P-Net sees the same memory too).

    Same separable integer sums as :func:`_crops_uint8`, with windows shared by all images:
    the rows pass adds whole image rows, the columns pass is one matmul.
    """
    r_start, r_len = (a[0] for a in _pool_windows(np.array([px.h]), out_h))
    c_start, c_len = (a[0] for a in _pool_windows(np.array([px.w]), out_w))
    n, c = px.planes.shape[0], px.c
    rows = px.planes[:, r_start].astype(np.uint16)  # (n, out_h, w * c)
    for j in range(1, int(r_len.max())):
        np.add(rows, px.planes[:, np.where(j < r_len, r_start + j, px.h)], out=rows)
    planes = np.empty((n, out_h, c, px.w), np.float32)
    planes[...] = rows.reshape(n, out_h, px.w, c).transpose(0, 1, 3, 2)
    x = np.arange(px.w)[:, None]
    win = ((x >= c_start) & (x < c_start + c_len)).astype(np.float32)  # (w, out_w)
    sums = torch.mm(torch.from_numpy(planes.reshape(-1, px.w)),
                    torch.from_numpy(win)).numpy().reshape(n, out_h, c, out_w)
    np.divide(sums, r_len.astype(np.float32)[None, :, None, None], out=sums)
    out = np.empty((n, out_h, out_w, c), np.float32)
    np.divide(sums.transpose(0, 1, 3, 2), c_len.astype(np.float32)[None, None, :, None], out=out)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def _crops_uint8(px: _HostPixels, image_index: np.ndarray, bounds: np.ndarray,
                 size: int) -> np.ndarray:
    """(n, 3, size, size) float32 area-resized crops of uint8 images, in row order, exactly.

    With integer pixels every window sum is an integer below 2**24, exact in float32 in any
    order; the only rounding is the final ``sum / kh / kw``, which is done as torch's adaptive
    average pool does it. So the crops are pooled separably, many boxes of similar width at
    once: the rows pass adds, for each output row, the crop rows of its window (gathered from
    the overlapping row view; missing rows read zeros), and the columns pass is one batched
    matmul with each box's 0/1 window matrix (products of integers by 0 or 1: exact too).
    """
    n, c = len(bounds), px.c
    out = np.empty((n, c, size, size), np.float32)
    x0, y0 = bounds[:, 0].astype(np.int64), bounds[:, 1].astype(np.int64)
    cw = (bounds[:, 2] - bounds[:, 0]).astype(np.int64)
    ch = (bounds[:, 3] - bounds[:, 1]).astype(np.int64)
    r_start, r_len = _pool_windows(ch, size)
    c_start, c_len = _pool_windows(cw, size)
    # First pixel of each output row's window, as a flat pixel index of the batch.
    first = px.pixel(image_index.astype(np.int64)[:, None], y0[:, None] + r_start) + x0[:, None]
    order = np.argsort(cw, kind="stable")  # similar widths together: little padding
    cost = size * r_len.max(axis=1)[order] * cw[order]
    for run in _chunks(cost, _CHUNK_BUDGET):
        sel = order[run]
        k, lh, wp = len(sel), int(r_len[sel].max()), int(cw[sel].max())
        view = px.rows(wp)
        lens = r_len[sel]
        rows = view[first[sel]].astype(np.uint16)  # (k, size, wp * c); sums < 2**16
        for j in range(1, lh):
            idx = np.where(j < lens, first[sel] + j * px.w, px.zero)
            np.add(rows, view[idx], out=rows)
        # Pixels past a box's own width belong to its neighbours; its window matrix gives
        # them weight 0, so they never reach the result.
        planes = np.empty((k, c, size, wp), np.float32)
        planes[...] = rows.reshape(k, size, wp, c).transpose(0, 3, 1, 2)
        x = np.arange(wp)[:, None]
        lo = c_start[sel][:, None, :]
        win = ((x >= lo) & (x < lo + c_len[sel][:, None, :])).astype(np.float32)  # (k, wp, size)
        # torch, not numpy: numpy's BLAS brings its own threads, which fight torch's.
        sums = torch.bmm(torch.from_numpy(planes.reshape(k, c * size, wp)),
                         torch.from_numpy(win)).numpy().reshape(k, c, size, size)
        np.divide(sums, r_len[sel].astype(np.float32)[:, None, :, None], out=sums)
        np.divide(sums, c_len[sel].astype(np.float32)[:, None, None, :], out=sums)
        out[sel] = sums
    return out


def _crops_grouped(nhwc: torch.Tensor, image_index: torch.Tensor, bounds: np.ndarray,
                   size: int) -> torch.Tensor:
    """(n, 3, size, size) area-resized crops of any float images, in row order, exactly.

    All crops of one (height, width) are gathered at once and average-pooled in one call;
    per crop this is the same kernel on the same values as ``interpolate(mode="area")``.
    The general path (float pixels, huge windows): sizes vary, so there are many groups.
    """
    n = len(bounds)
    dev = nhwc.device
    out = torch.empty((n, nhwc.shape[3], size, size), dtype=nhwc.dtype, device=dev)
    if n == 0:
        return out
    hw = np.stack([bounds[:, 3] - bounds[:, 1], bounds[:, 2] - bounds[:, 0]], axis=1)
    shapes, group = np.unique(hw, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(len(shapes) + 1))
    img_idx = image_index.to(dev)
    x0 = torch.as_tensor(bounds[:, 0], device=dev)
    y0 = torch.as_tensor(bounds[:, 1], device=dev)
    for g, (ch, cw) in enumerate(shapes.tolist()):
        rows_sel = torch.as_tensor(order[starts[g]:starts[g + 1]], device=dev)
        ys = y0[rows_sel, None] + torch.arange(ch, device=dev)
        xs = x0[rows_sel, None] + torch.arange(cw, device=dev)
        patch = nhwc[img_idx[rows_sel, None, None], ys[:, :, None], xs[:, None, :]]
        # NCHW, as facenet-pytorch's box slices are pooled: the same kernel on any device.
        out[rows_sel] = adaptive_avg_pool2d(patch.permute(0, 3, 1, 2).contiguous(),
                                            (size, size))
    return out


class _Pixels:
    """The batch as the pyramid and the box crops read it."""

    def __init__(self, x: torch.Tensor, dtype: torch.dtype):
        self.x, self.dtype = x, dtype
        self.hw = (int(x.shape[1]), int(x.shape[2]))
        self._nchw = None
        # The fast exact paths need integer pixels, float32 nets and the host; on a GPU
        # everything stays there, with torch's own pooling kernel.
        self.host = None
        if x.dtype == torch.uint8 and x.device.type == "cpu" and dtype == torch.float32:
            self.host = _HostPixels(x.numpy())

    @property
    def nchw(self) -> torch.Tensor:
        """The float batch as facenet-pytorch builds it: an NCHW view with channels-last
        strides (made only when a general path needs it)."""
        if self._nchw is None:
            self._nchw = self.x.permute(0, 3, 1, 2).to(self.dtype)
        return self._nchw

    def resized(self, out_h: int, out_w: int) -> torch.Tensor:
        """A P-Net pyramid level: ``imresample(nchw, (out_h, out_w))``, bit for bit."""
        # Integer window sums stay exact in float32 below 2**24, and row sums in uint16.
        win_h, win_w = -(-self.hw[0] // out_h) + 1, -(-self.hw[1] // out_w) + 1
        # (torch pools to 1x1 with a mean, which divides once: never a pyramid level.)
        if (self.host is not None and win_h * win_w * 255 < 2**24 and win_h <= 257
                and out_h * out_w > 1):
            return _area_resize_uint8(self.host, out_h, out_w)
        return imresample(self.nchw, (out_h, out_w))

    def crops(self, image_index: torch.Tensor, bounds: np.ndarray, size: int) -> torch.Tensor:
        """(n, C, size, size) crops, as facenet-pytorch's per-box ``imresample``, bit for
        bit; the fast path up to crops of about 6,000 px at 24x24 (the bounds above)."""
        longest = np.max(bounds[:, 2:] - bounds[:, :2], initial=0) // size + 2
        if self.host is not None and longest * longest * 255 < 2**24:
            return torch.from_numpy(_crops_uint8(self.host, image_index.cpu().numpy(),
                                                 bounds, size))
        return _crops_grouped(self.nchw.permute(0, 2, 3, 1), image_index, bounds, size)


def _refine_input(pixels: _Pixels, boxes: torch.Tensor, image_index: torch.Tensor,
                  size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Net input for the boxes whose clipped crop is not empty, and those boxes.

    facenet-pytorch skips empty crops but keeps their boxes, which misaligns (and crashes)
    the next step; here such boxes are dropped with their crops. Boxes always overlap the
    image in practice, so this changes nothing on inputs facenet-pytorch can handle.
    """
    h, w = pixels.hw
    bounds = _crop_bounds(boxes, w, h)
    ok = (bounds[:, 2] > bounds[:, 0]) & (bounds[:, 3] > bounds[:, 1])
    if not ok.all():
        keep = torch.as_tensor(np.flatnonzero(ok), device=boxes.device)
        boxes, image_index, bounds = boxes[keep], image_index[keep], bounds[ok]
    return _normalise(pixels.crops(image_index, bounds, size)), boxes, image_index


def detect(imgs: np.ndarray | torch.Tensor, min_face: float, pnet, rnet, onet,
           thresholds: tuple[float, float, float], factor: float,
           device: str | torch.device) -> CascadeOutput:
    """Faces in a batch of same-size HxWx3 RGB images (uint8 or float, NHWC)."""
    x = torch.as_tensor(imgs, device=device)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    pixels = _Pixels(x, next(pnet.parameters()).dtype)
    h, w = pixels.hw

    # Stage 1: P-Net over the pyramid; NMS per scale and image, then across scales.
    cands, cand_img, picks = [], [], []
    offset = 0
    for scale in _pyramid(h, w, min_face, factor):
        level = pixels.resized(int(h * scale + 1), int(w * scale + 1))
        reg, prob = pnet(_normalise(level))
        b, bi = generateBoundingBox(reg, prob[:, 1], scale, thresholds[0])
        picks.append(batched_nms(b[:, :4], b[:, 4], bi, 0.5) + offset)
        offset += len(b)
        cands.append(b)
        cand_img.append(bi)
    boxes = torch.cat(cands)
    image_index = torch.cat(cand_img)
    keep = torch.cat(picks)
    boxes, image_index = boxes[keep], image_index[keep]
    keep = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
    boxes, image_index = boxes[keep], image_index[keep]
    # P-Net's regression is relative to the window's side (x2 - x1, no +1 here).
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * bw, boxes[:, 1] + boxes[:, 6] * bh,
                         boxes[:, 2] + boxes[:, 7] * bw, boxes[:, 3] + boxes[:, 8] * bh,
                         boxes[:, 4]], dim=1)
    boxes = rerec(boxes)

    # Stage 2: R-Net rescores and refines every candidate.
    if len(boxes):
        data, boxes, image_index = _refine_input(pixels, boxes, image_index, 24)
        reg, prob = _run_net(rnet, data)
        score = prob[:, 1]
        ok = score > thresholds[1]
        boxes = torch.cat([boxes[ok, :4], score[ok, None]], dim=1)
        image_index, reg = image_index[ok], reg[ok]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
        boxes = rerec(bbreg(boxes[keep], reg[keep]))
        image_index = image_index[keep]

    # Stage 3: O-Net rescores, refines and places the 5 points.
    points = torch.zeros(0, 5, 2, device=device)
    if len(boxes):
        data, boxes, image_index = _refine_input(pixels, boxes, image_index, 48)
        reg, pts, prob = _run_net(onet, data)
        score = prob[:, 1]
        ok = score > thresholds[2]
        boxes = torch.cat([boxes[ok, :4], score[ok, None]], dim=1)
        image_index, reg, pts = image_index[ok], reg[ok], pts[ok]
        # Points are fractions of the box (+1 sized, 1-based): 5 x's, then 5 y's.
        side_w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        side_h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        px = side_w * pts[:, :5] + boxes[:, 0, None] - 1
        py = side_h * pts[:, 5:10] + boxes[:, 1, None] - 1
        points = torch.stack([px, py], dim=2)
        boxes = bbreg(boxes, reg)
        # Final NMS per image on intersection over the smaller box ("Min"); facenet-pytorch
        # does it in numpy, and so do we, with its function, so ties resolve the same way.
        keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_index, 0.7, "Min")
        boxes, image_index, points = boxes[keep], image_index[keep], points[keep]

    return CascadeOutput(boxes.cpu().numpy(), points.cpu().numpy(),
                         image_index.cpu().numpy())
