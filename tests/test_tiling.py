"""Tile layout and mirrored reads (fastunet.engine.tiling) against numpy: np.pad for the mirror,
brute-force coverage checks for blocks and tiles."""

import math

import numpy as np
import pytest
import torch

from fastunet import geometry
from fastunet.engine.tiling import (
    MIN_SPLIT_STEP,
    Block,
    Layout,
    block_shape,
    min_split_step,
    mirrored_read_plan,
    output_chunks,
    pick_step,
    plan_layout,
    read_mirrored,
    tile_for_extent,
)
from fastunet.geometry import reflect_index


def _rng():
    return np.random.default_rng(torch.initial_seed())


class ArraySource:
    """The part of fastunet.io.VolumeSource that tiling uses, over a numpy array; records
    every region read."""

    def __init__(self, array, axes):
        self.array, self.axes, self.shape = array, axes, array.shape
        self.reads = []

    def read(self, region):
        for s, n in zip(region, self.shape):
            assert 0 <= s.start <= s.stop <= n and s.step in (None, 1)
        self.reads.append(region)
        return np.array(self.array[region])


@pytest.mark.parametrize("n", list(range(1, 13)) + [31])
def test_reflect_index_matches_np_pad_reflect(n):
    a = np.arange(n)
    for left in range(0, 4 * n + 3):
        for right in (0, 1, n - 1, n, 2 * n + 1, 5 * n + 2):
            right = max(right, 0)
            expected = np.pad(a, (left, right), mode="reflect")
            got = reflect_index(np.arange(-left, n + right), n)
            np.testing.assert_array_equal(got, expected, err_msg=f"n={n} pad=({left}, {right})")


def test_reflect_index_is_not_symmetric_mode():
    # dask's map_overlap(boundary="reflect") repeats the edge (numpy "symmetric"); we must not.
    assert reflect_index([-1, -2, 5, 6], 5).tolist() == [1, 2, 3, 2]
    assert np.pad(np.arange(5), 2, mode="symmetric")[:2].tolist() == [1, 0]
    assert reflect_index([-7, 0, 9], 1).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        reflect_index([0], 0)


def test_mirrored_read_plan_inside_reads_exactly():
    assert mirrored_read_plan(3, 9, 10) == (slice(3, 9), None)
    read, take = mirrored_read_plan(-3, 4, 10)
    assert read == slice(0, 4) and take.tolist() == [3, 2, 1, 0, 1, 2, 3]


@pytest.mark.parametrize("axes", ["YX", "ZYX", "CYX", "CZYX"])
def test_read_mirrored_equals_np_pad(axes):
    rng = _rng()
    shape = {"Y": 7, "X": 11, "Z": 3, "C": 2}
    arr = rng.integers(0, 1000, size=[shape[a] for a in axes]).astype(np.uint16)
    src = ArraySource(arr, axes)
    spatial_axes = [i for i, a in enumerate(axes) if a != "C"]
    for _ in range(25):
        box, pads = [], []
        for i, a in enumerate(axes):
            n = arr.shape[i]
            if a == "C":
                pads.append((0, 0))
                continue
            if a == "Z":  # the engine never mirrors Z, but the read supports it
                start = int(rng.integers(-2, n))
                stop = int(rng.integers(max(start + 1, 1), n + 3))
            else:  # wider than the image on purpose: a volume smaller than the context
                start = int(rng.integers(-3 * n, n))
                stop = int(rng.integers(max(start + 1, 1), 4 * n))
            box.append((start, stop))
            pads.append((max(0, -start), max(0, stop - n)))
        padded = np.pad(arr, pads, mode="reflect")
        sel = []
        for i, a in enumerate(axes):
            if a == "C":
                sel.append(slice(None))
            else:
                start, stop = box[spatial_axes.index(i)]
                off = max(0, -start)
                sel.append(slice(start + off, stop + off))
        src.reads.clear()
        got = read_mirrored(src, box)
        assert len(src.reads) == 1  # one slab read per block
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, padded[tuple(sel)])


def _check_layout(layout):
    """Every pixel of every block is supplied by exactly one tile, tiles sit on the global
    2**depth grid, blocks are unions of chunks and tile the volume."""
    nd = layout.ndim
    q = 2**layout.depth
    c = layout.context
    covered = np.zeros(layout.shape, np.int32)
    for block in layout.blocks():
        for (s, e), ch, b, n in zip(block.box, layout.chunks, layout.block, layout.shape):
            assert s % ch == 0 and s % b == 0
            assert e % ch == 0 or e == n
        in_box = layout.input_box(block)
        for axis in (0, 1):
            lo, hi = in_box[nd - 2 + axis]
            assert (lo + c) % q == 0  # the slab starts at a tile origin on the global grid
        seen = np.zeros(block.shape[-2:], np.int32)
        for (oy, ox), (sy, sx), (dy, dx) in layout.block_tiles(block):
            gy, gx = in_box[-2][0] + oy + c, in_box[-1][0] + ox + c  # global output origin
            assert gy % q == 0 and gx % q == 0
            assert oy + layout.tile[0] <= in_box[-2][1] - in_box[-2][0]
            assert ox + layout.tile[1] <= in_box[-1][1] - in_box[-1][0]
            assert 0 <= sy.start < sy.stop <= layout.out[0] and 0 <= sx.start < sx.stop <= layout.out[1]
            assert sy.stop - sy.start == dy.stop - dy.start and sx.stop - sx.start == dx.stop - dx.start
            # the tile's output pixel (sy, sx) is global pixel (block start + dy)
            assert gy + sy.start == block.box[-2][0] + dy.start
            assert gx + sx.start == block.box[-1][0] + dx.start
            seen[dy, dx] += 1
        assert (seen == 1).all()
        covered[block.slices] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize(
    "shape,tile,chunks,block",
    [
        ((37, 53), (48, 52), (7, 9), (14, 27)),
        ((64, 64), (60, 60), (16, 16), (32, 48)),
        ((5, 7), (48, 48), (5, 7), (5, 7)),  # smaller than the context (20)
        ((100, 90), (72, 56), (10, 13), (30, 26)),
        ((3, 41, 29), (64, 48), (2, 5, 6), (4, 10, 12)),
    ],
)
def test_layout_covers_each_pixel_once_on_the_global_grid(shape, tile, chunks, block):
    _check_layout(Layout(shape=shape, depth=2, tile=tile, chunks=chunks, block=block))


def test_layout_random_configurations():
    rng = _rng()
    for _ in range(30):
        depth = int(rng.integers(1, 4))
        shape = tuple(int(n) for n in rng.integers(1, 90, size=int(rng.integers(2, 4))))
        valid = geometry.valid_input_sizes(depth, max_size=200)
        usable = [t for t in valid if geometry.output_size(t, depth) >= 2**depth]
        tile = (int(rng.choice(usable)), int(rng.choice(usable)))
        chunks = tuple(int(rng.integers(1, n + 1)) for n in shape)
        block = tuple(c * int(rng.integers(1, 4)) for c in chunks)
        _check_layout(Layout(shape=shape, depth=depth, tile=tile, chunks=chunks, block=block))


def test_block_names_encode_boxes():
    layout = Layout(shape=(3, 41, 29), depth=2, tile=(48, 48), chunks=(2, 5, 6), block=(2, 10, 12))
    names = [b.name for b in layout.blocks()]
    assert len(set(names)) == layout.num_blocks == 2 * 5 * 3
    assert names[-1] == "z2-3_y40-41_x24-29"
    assert Block(index=(0, 0), box=((0, 4), (8, 16))).name == "y0-4_x8-16"


def test_layout_rejects_bad_shapes():
    with pytest.raises(ValueError, match="Nearest valid"):
        Layout(shape=(10, 10), depth=2, tile=(50, 48), chunks=(5, 5), block=(5, 5))
    with pytest.raises(ValueError, match="at least 2\\*\\*depth"):
        Layout(shape=(10, 10), depth=4, tile=(188, 188), chunks=(5, 5), block=(5, 5))  # output 4 < 16
    with pytest.raises(ValueError, match="multiple of the chunks"):
        Layout(shape=(10, 10), depth=2, tile=(48, 48), chunks=(4, 4), block=(6, 8))
    with pytest.raises(ValueError, match="non-empty"):
        Layout(shape=(0, 10), depth=2, tile=(48, 48), chunks=(4, 4), block=(4, 4))


def test_default_tiles_are_never_larger_than_a_small_image_needs():
    depth = 4
    for n in (1, 15, 16, 17, 100, 388, 500):
        t = tile_for_extent(n, depth)
        out = geometry.output_size(t, depth)
        assert out >= n and out >= 16
        below, _ = geometry.nearest_valid_sizes(t - 1, depth)
        assert below is None or geometry.output_size(below, depth) < max(n, 16)
    layout = plan_layout((100, 3000), depth, source_chunks=(100, 1000))
    assert layout.tile[0] == tile_for_extent(100, depth) and layout.last_tile(0) == 0
    sy, sx = layout.step
    assert sx <= 512 and (1000 % sx == 0 or sx % 1000 == 0 or sx == 512 - 512 % 16)


def test_a_run_of_few_tiles_is_split_so_that_no_stream_waits():
    """side_by_side: the longest default step split while that takes fewer rounds of that many
    tiles times the tile's area (never below MIN_SPLIT_STEP, never a given tile; a run of
    SPLIT_ROUNDS rounds only when its last round is not full), each pixel still from exactly one tile."""
    def plan(shape, chunks, k, **kw):
        return plan_layout(shape, 3, source_chunks=chunks, max_step=1024, max_block_voxels=1 << 20, side_by_side=k,
                           **kw)

    one = plan((1024, 1024), (1024, 1024), 1)
    assert one.tile == (1116, 1116) and one.tile_count() == 1
    two = plan((1024, 1024), (1024, 1024), 2)
    assert two.tile == (604, 1116) and two.step == (512, 1024) and two.tile_count() == 2
    assert plan((1024, 1024), (1024, 1024), 4).tile_count() == 4
    assert plan((1024, 2048), (1024, 1024), 2).tile == (1116, 1116)  # two tiles, one round already
    slices = plan((3, 1024, 1024), (1, 1024, 1024), 2)  # 3 tiles: 2 rounds; 6 half tiles: 3 shorter ones
    assert slices.tile == (604, 1116) and slices.tile_count() == 6
    odd = plan((1000, 700), (1000, 700), 2)
    assert odd.tile_count() == 2 and odd.step[0] >= MIN_SPLIT_STEP
    _check_layout(odd)
    assert plan((200, 230), (200, 230), 2).tile_count() == 1  # halves under MIN_SPLIT_STEP: one tile
    assert plan((1024, 1024), (1024, 1024), 2, tile=1116).tile == (1116, 1116)  # a given tile
    many = plan((2, 2048, 2048), (1, 1024, 1024), 2)
    assert many.tile == (1116, 1116) and many.tile_count() == 8  # 4 rounds already: as planned
    # a longer run whose last round leaves a stream idle: up to LAST_ROUND_SPLITS splits tried
    odd = plan((2304, 2304), (2304, 2304), 2)  # 9 tiles of 860: 5 rounds; 12 of 668 x 860: 6 smaller ones
    assert odd.tile == (668, 860) and odd.tile_count() == 12
    _check_layout(odd)
    assert plan((2304, 2304), (2304, 2304), 1).tile == (860, 860)  # one stream: no idle round
    assert plan((2, 3000, 3000), (1, 3000, 3000), 2).tile == (1092, 1092)  # 18 tiles: every round full


def test_a_3d_run_of_one_tile_is_split_for_two_streams():
    """A 3D network's steps (at most 128) split down to twice the axis's context
    (min_split_step), where the 2D floor of MIN_SPLIT_STEP would never split one."""
    pools = ((1, 2), (2, 2), (2, 2))  # the bundled 3D model's: 1x2x2, 2x2x2

    def plan(shape, k):
        return plan_layout(shape, 2, source_chunks=shape, max_step=128, max_block_voxels=1 << 20, pools=pools,
                           side_by_side=k)

    assert [min_split_step(p, 3) for p in pools] == [24, 40, 40] and min_split_step(2, 2) == MIN_SPLIT_STEP
    assert plan((24, 96, 96), 1).tile_count() == 1
    two = plan((24, 96, 96), 2)
    assert two.tile_count() == 2 and min(two.step) >= 24 and min(two.step[1:]) >= 40
    for block in two.blocks():  # each voxel from exactly one tile
        seen = np.zeros(block.shape, np.int32)
        for _, _, dst in two.block_tiles(block):
            seen[dst] += 1
        assert (seen == 1).all()
    assert plan((9, 29, 23), 2).tile_count() == 1  # too small to split
    assert plan((24, 512, 512), 2).tile_count() == 16  # rounds enough: as planned


def test_chunks_follow_the_tiles_where_the_input_chunks_fit_no_step():
    """An axis whose chunks no step fits (a whole TIFF of 2300 px: output chunks of 575), or
    whose chunk-aligned tiles compute EVEN_GAIN more than the fewest equal ones, takes equal
    tiles and chunks of their step: no tile computed for two blocks. Given chunks or a given
    block keep the chunks; an axis of one tile keeps its chunk."""
    def plan(shape, source, **kw):
        return plan_layout(shape, 3, source_chunks=source, max_step=1024, max_block_voxels=1 << 20, **kw)

    def per_axis(layout):  # tiles along each axis: each block holding whole tiles, the run has their product
        return [layout.last_tile(axis) + 1 for axis in range(layout.tiled)]

    tiff = plan((2300, 2300), (2300, 2300))
    assert tiff.tile == (860, 860) and tiff.step == (768, 768) and tiff.chunks == (768, 768)
    assert per_axis(tiff) == [3, 3] and tiff.tile_count() == 9
    _check_layout(tiff)
    forced = plan((2300, 2300), (2300, 2300), chunks=(575, 575))  # the chunks as the input gives them
    assert forced.tile == (1116, 1116) and forced.tile_count() == 36  # each 1024-step tile for up to 4 blocks
    assert plan((2300, 2300), (2300, 2300), block=(1150, 1150)).chunks == (575, 575)
    just_over = plan((1037, 1037), (1024, 1024))  # aligned: 2 x 1116 along each axis, equal: 2 x 612
    assert just_over.tile == (612, 612) and just_over.chunks == (520, 520) and just_over.tile_count() == 4
    _check_layout(just_over)
    kept = plan((2560, 2560), (2560, 2560))  # chunks of 640 fit a step: 4 x 732 against 3 x 948, under 10 % more
    assert kept.tile == (732, 732) and kept.chunks == (640, 640) and kept.tile_count() == 16
    assert plan((2048, 2048), (1024, 1024)).chunks == (1024, 1024)
    one = plan((900, 3000), (900, 3000))  # Y: one tile (output 900, step 896) keeps its chunk of 900
    assert one.chunks[0] == 900 and per_axis(one)[0] == 1 and one.num_blocks == per_axis(one)[1]
    _check_layout(one)
    cuda = plan_layout((5000, 5000), 3, source_chunks=(5000, 5000), max_step=2048, max_block_voxels=8 << 20)
    assert cuda.step == (1672, 1672) and cuda.chunks == (836, 836) and cuda.tile_count() == 9  # 1024 at most
    _check_layout(cuda)


def test_default_plans_compute_at_most_1_5x_their_output_on_any_image_size():
    """Square images of 1000-6200 px, whole (a TIFF, an array: one chunk) or in chunks of 1024,
    the CPU's 1024-px steps and 1 Mpx blocks: the input pixels the tiles compute, over the
    output's, at most 1.5 (the README's figure; it was up to 9.7 for whole images before the
    chunks followed the tiles)."""
    import statistics

    ratios = {"whole": [], "chunked": []}
    for n in range(1000, 6200, 37):
        for kind, source in (("whole", (n, n)), ("chunked", (1024, 1024))):
            layout = plan_layout((n, n), 3, source_chunks=source, max_step=1024, max_block_voxels=1 << 20)
            ratios[kind].append(layout.tile_count() * math.prod(layout.tile) / n**2)
    assert max(max(r) for r in ratios.values()) < 1.5
    assert statistics.median(ratios["whole"]) < 1.25 and statistics.median(ratios["chunked"]) < 1.27


def test_tile_count_is_every_block_s_tiles():
    """Layout.tile_count (a product over the axes) against the blocks' own tiles, counted one
    by one: 2D, a ZYX volume slice by slice, a 3D tile with pools per axis, blocks cutting tiles."""
    layouts = [plan_layout((2300, 1900), 3, source_chunks=(575, 380), chunks=(575, 380)),
               plan_layout((5, 700, 900), 2, source_chunks=(2, 128, 96), max_step=100),
               plan_layout((40, 300, 260), 2, source_chunks=(8, 64, 64), pools=((1, 2), 2, 2), max_step=(24, 64, 64)),
               Layout(shape=(3, 500, 500), depth=2, tile=(108, 108), chunks=(1, 50, 70), block=(2, 100, 140))]
    for layout in layouts:
        slices = layout.ndim == 3 and layout.tiled == 2
        counted = sum((b.shape[0] if slices else 1) * len(layout.block_tiles(b)) for b in layout.blocks())
        assert layout.tile_count() == counted


def test_pick_step_prefers_chunk_aligned_steps():
    assert pick_step(4, chunk=1024, max_step=512) == 512
    assert pick_step(4, chunk=96, max_step=512) == 480  # 5 chunks per tile step
    assert pick_step(2, chunk=1000, max_step=300) == 200  # divides the chunk
    assert pick_step(4, chunk=1000, max_step=300) % 16 == 0


def test_output_chunks_follow_the_input():
    assert output_chunks((500, 4096, 4096), (64, 256, 256)) == (16, 256, 256)
    assert output_chunks((500, 20000, 20000), (1, 20000, 20000)) == (1, 1000, 1000)
    assert output_chunks((30, 40), (64, 64)) == (30, 40)


def test_block_shape_is_bounded_and_chunk_aligned():
    b = block_shape((4000, 4000, 4000), (16, 64, 64), (384, 384), max_voxels=8 << 20)
    assert b[0] % 16 == 0 and b[1] % 64 == 0 and b[2] % 64 == 0 and np.prod(b) <= 8 << 20
    assert b[1] % 384 == 0 and b[2] % 384 == 0  # whole tiles per block
    b = block_shape((4000, 4000, 4000), (64, 64, 64), (384, 384), max_voxels=8 << 20)
    # one chunk deep, one step square: above the bound (9.4 M), rather than blocks of part of a tile
    assert all(x % 64 == 0 for x in b) and b == (64, 384, 384)
    b = block_shape((4000, 4000, 4000), (64, 64, 64), (256, 256), max_voxels=8 << 20)
    assert all(x % 64 == 0 for x in b) and np.prod(b) <= 8 << 20
    b = block_shape((10000, 10000), (1000, 1000), (496, 496))
    assert b[0] % 1000 == 0 and b[0] <= 4000


def test_a_tile_longer_than_the_blocks_target_gets_blocks_of_its_step():
    """A block shorter than the tile's step would compute the whole tile for each of its
    blocks: a given tile of 2140 (step 2048) on a 2 x 2048 x 2048 volume with 1 Mvoxel blocks
    ran 8 tiles of 2140 x 2140 (four per slice) instead of 2 (15 s against 5.3 s, measured here)."""
    layout = plan_layout((2, 2048, 2048), 3, source_chunks=(1, 1024, 1024), tile=2140, max_block_voxels=1 << 20)
    assert layout.step == (2048, 2048) and layout.block == (1, 2048, 2048) and layout.tile_count() == 2
    # steps within the target keep their blocks (the default CPU plans)
    assert plan_layout((2, 2048, 2048), 3, source_chunks=(1, 1024, 1024), max_step=1024,
                       max_block_voxels=1 << 20).block == (1, 1024, 1024)
    assert block_shape((4096, 4096), (1024, 1024), (2048, 2048), max_voxels=1 << 20) == (2048, 2048)
    assert block_shape((4096, 4096), (1000, 1000), (1496, 1496), max_voxels=1 << 20) == (1000, 1000)  # lcm too large


def test_plan_layout_names_the_option_of_a_bad_block():
    n = int(_rng().integers(40, 80))
    with pytest.raises(ValueError, match=r'^block="1,30,30" has 3 entries but the image is 2-D.*e\.g\. block="30,30"\.$'):
        plan_layout((n, n), 2, source_chunks=(10, 10), block=(1, 30, 30))
    with pytest.raises(ValueError, match=r'^block="30,30" has 2 entries but the image is 3-D.*e\.g\. block="1,30,30"\.$'):
        plan_layout((2, n, n), 2, source_chunks=(1, 10, 10), block=(30, 30))
    with pytest.raises(ValueError, match=r'^block="30" has 1 entries but the image is 2-D.*e\.g\. block="30,30"\.$'):
        plan_layout((n, n), 2, source_chunks=(10, 10), block=(30,))
    with pytest.raises(ValueError, match=r'^block="15,10" must be a multiple of the chunks \(10,10\).*block="20,10"\.$'):
        plan_layout((n, n), 2, source_chunks=(10, 10), block=(15, 10))
    with pytest.raises(ValueError, match=r'^block="0,10" has a size below 1'):
        plan_layout((n, n), 2, source_chunks=(10, 10), block=(0, 10))
    with pytest.raises(ValueError, match=r'^chunks="1,10,10" has 3 entries'):
        plan_layout((n, n), 2, source_chunks=(10, 10), chunks=(1, 10, 10))
    assert plan_layout((n, n), 2, source_chunks=(10, 10), block=(20, 30)).block == (20, 30)
